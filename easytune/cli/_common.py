"""Help texts shared by several commands (no heavy imports: ``easytune --help`` stays fast)."""

DEVICE_HELP = "auto | cpu | cuda | cuda:N (auto: CUDA when available, else the CPU; the choice is printed)"
