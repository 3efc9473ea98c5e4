"""Triton kernels of easytune, installed under the import name ``easytune_kernels``.

Imported lazily by ``easytune.ops`` (never the reverse); each module imports ``triton`` itself.
"""
