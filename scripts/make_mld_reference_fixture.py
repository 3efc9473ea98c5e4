"""Write tests/data/{mld,mdm}_reference_tiny.pt from the public reference implementations.

The fixtures hold tiny randomly initialised reference models (state dicts in the reference key layout),
fixed inputs and the reference outputs; ``tests/test_models_mld.py`` / ``test_models_mdm.py`` load the
state dicts into easytune's models strictly and compare outputs. No reference code is committed: the
checkouts live outside the repository and only need ``torch``.

    git --git-dir=<EasyTune mirror> archive HEAD mld | tar -x -C /tmp/ref/easytune      # or MotionLCM
    git --git-dir=<motion-diffusion-model mirror> archive HEAD model utils | tar -x -C /tmp/ref/mdm
    .venv/bin/python scripts/make_mld_reference_fixture.py \
        --mld-repo /tmp/ref/easytune --mdm-repo /tmp/ref/mdm

MDM's module imports CLIP, SMPL (smplx) and BERT at import time; those imports are replaced by empty
stand-ins (they hold no weights that the saved state dict keeps: CLIP weights are stripped as in the
reference training loop, and the SMPL layer is not an ``nn.Module`` attribute).
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"

# Two MLD variants: the EasyTune / MLD-v1 layout and the MotionLCM-V2 layout (latent projections,
# identity text activation).
MLD_VARIANTS = {
    "v1": {
        "vae": dict(
            nfeats=263,
            latent_dim=[2, 16],
            hidden_dim=None,
            force_pre_post_proj=False,
            ff_size=32,
            num_layers=3,
            num_heads=4,
            dropout=0.1,
            arch="encoder_decoder",
            normalize_before=False,
            activation="gelu",
            position_embedding="learned",
        ),
        "denoiser": dict(
            latent_dim=[2, 16],
            hidden_dim=None,
            text_dim=24,
            time_dim=16,
            ff_size=32,
            num_layers=3,
            num_heads=4,
            dropout=0.1,
            activation="gelu",
            arch="trans_enc",
            force_pre_post_proj=False,
            text_act_fn="relu",
            flip_sin_to_cos=True,
            freq_shift=0,
            position_embedding="learned",
        ),
    },
    "v2": {
        "vae": dict(
            nfeats=263,
            latent_dim=[3, 8],
            hidden_dim=16,
            force_pre_post_proj=True,
            ff_size=32,
            num_layers=3,
            num_heads=2,
            dropout=0.1,
            arch="encoder_decoder",
            normalize_before=False,
            activation="gelu",
            position_embedding="learned",
        ),
        "denoiser": dict(
            latent_dim=[3, 8],
            hidden_dim=16,
            text_dim=24,
            time_dim=20,
            ff_size=32,
            num_layers=5,
            num_heads=2,
            dropout=0.1,
            activation="gelu",
            arch="trans_enc",
            force_pre_post_proj=True,
            text_act_fn=None,
            flip_sin_to_cos=True,
            freq_shift=0,
            position_embedding="learned",
        ),
    },
}

MDM_KWARGS = dict(
    modeltype="",
    njoints=263,
    nfeats=1,
    num_actions=1,
    translation=True,
    pose_rep="rot6d",
    glob=True,
    glob_rot=True,
    latent_dim=16,
    ff_size=32,
    num_layers=2,
    num_heads=4,
    dropout=0.1,
    activation="gelu",
    data_rep="hml_vec",
    dataset="humanml",
    clip_dim=512,
    arch="trans_enc",
    emb_trans_dec=False,
    clip_version="ViT-B/32",
    cond_mode="text",
    cond_mask_prob=0.1,
    text_encoder_type="clip",
    pos_embed_max_len=200,
    mask_frames=True,
)


def _perturb(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Move every parameter off its init (LayerNorm ones/zeros included) so ordering bugs show."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _f32(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float().contiguous() if v.is_floating_point() else v for k, v in tensors.items()}


def _random(*shape: int, gen: torch.Generator) -> torch.Tensor:
    """float32-representable float64 values (the stored float32 inputs reproduce them exactly)."""
    return torch.randn(*shape, generator=gen).double()


def _lengths_mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < lengths[:, None]


def make_mld(repo: Path, gen: torch.Generator) -> dict:
    sys.path.insert(0, str(repo))
    from mld.models.architectures.mld_denoiser import MldDenoiser
    from mld.models.architectures.mld_vae import MldVae

    # Inputs and outputs are stored as float32; the reference computes in float64 on those values.
    fixture: dict = {
        "source": "EasyTune/MotionLCM mld.models.architectures (MldVae, MldDenoiser)",
        "variants": {},
    }
    b, t = 3, 10
    lengths = torch.tensor([10, 7, 4])
    feats = _random(b, t, 263, gen=gen)
    timestep = torch.tensor([999, 500, 3])
    for name, kw in MLD_VARIANTS.items():
        vae, den = MldVae(**kw["vae"]).eval(), MldDenoiser(**kw["denoiser"]).eval()
        _perturb(vae, gen)
        _perturb(den, gen)
        state = {f"vae.{k}": v.clone() for k, v in vae.state_dict().items()}
        state.update({f"denoiser.{k}": v.clone() for k, v in den.state_dict().items()})
        vae, den = vae.double(), den.double()
        latent_size, latent_dim = kw["vae"]["latent_dim"]
        z = _random(b, latent_size, latent_dim, gen=gen)
        text = _random(b, 1, kw["denoiser"]["text_dim"], gen=gen)
        with torch.no_grad():
            _, dist = vae.encode(feats, _lengths_mask(lengths, t))
            decoded = vae.decode(z, _lengths_mask(lengths, t))
            eps = den(z, timestep, text)[0]
        fixture["variants"][name] = {
            "reference_kwargs": kw,
            "state_dict": state,
            "inputs": _f32({"feats": feats, "lengths": lengths, "z": z, "timestep": timestep, "text": text}),
            # reference posterior tensors are [latent_size, B, D]; stored batch-first
            "outputs": _f32(
                {
                    "mu": dist.loc.permute(1, 0, 2),
                    "std": dist.scale.permute(1, 0, 2),
                    "decoded": decoded,
                    "eps": eps,
                }
            ),
        }
    return fixture


def _stub_mdm_imports() -> None:
    clip = types.ModuleType("clip")
    clip.load = lambda *a, **k: (torch.nn.Linear(2, 2), None)
    clip.model = types.SimpleNamespace(convert_weights=lambda m: None)
    rot = types.ModuleType("model.rotation2xyz")

    class Rotation2xyz:  # the reference keeps an SMPL layer here, outside the state dict
        def __init__(self, device: str, dataset: str = "amass") -> None:
            self.smpl_model = torch.nn.Module()

    rot.Rotation2xyz = Rotation2xyz
    bert = types.ModuleType("model.BERT.BERT_encoder")
    bert.load_bert = lambda *a, **k: None
    sys.modules.update({"clip": clip, "model.rotation2xyz": rot, "model.BERT.BERT_encoder": bert})


def make_mdm(repo: Path, gen: torch.Generator) -> dict:
    sys.path.insert(0, str(repo))
    _stub_mdm_imports()
    from model.mdm import MDM

    model = MDM(**MDM_KWARGS)
    model.eval()  # the reference's train() override returns None, so no chaining
    _perturb(model, gen)
    # as the reference training loop saves: everything but the CLIP weights
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("clip_model.")}
    model.double()
    b, t = 3, 9
    lengths = torch.tensor([9, 6, 2])
    x = _random(b, t, 263, gen=gen)
    timesteps = torch.tensor([199, 40, 0])
    text = _random(b, 512, gen=gen)
    x_ref = x.permute(0, 2, 1)[:, :, None]  # [B, njoints=263, nfeats=1, T]
    outputs = {}
    with torch.no_grad():
        for uncond in (False, True):
            y = {"text_embed": text[None], "mask": _lengths_mask(lengths, t)[:, None, None], "uncond": uncond}
            out = model(x_ref, timesteps, y)[:, :, 0].permute(0, 2, 1)
            outputs["uncond" if uncond else "cond"] = out * _lengths_mask(lengths, t)[..., None]
    return {
        "source": "motion-diffusion-model model/mdm.py (MDM, trans_enc, hml_vec, mask_frames)",
        "reference_kwargs": MDM_KWARGS,
        "state_dict": state,
        "inputs": _f32({"x": x, "lengths": lengths, "timesteps": timesteps, "text": text}),
        "outputs": _f32(outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mld-repo", type=Path, required=True, help="checkout holding the mld/ package")
    parser.add_argument("--mdm-repo", type=Path, required=True, help="checkout holding model/ and utils/")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, fixture in (("mld", make_mld(args.mld_repo, gen)), ("mdm", make_mdm(args.mdm_repo, gen))):
        path = args.out_dir / f"{name}_reference_tiny.pt"
        torch.save(fixture, path)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
