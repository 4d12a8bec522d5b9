"""AnyFlow training library: pure PyTorch/diffusers code (never imports prefect, mlflow, conf, tasks, flows).

Importing `anyflow` registers the toy world's `LinearPatchVAE` (module `anyflow.vae`): diffusers >= 0.42
only loads a custom pipeline component whose module the caller has imported, so a toy teacher folder loads with

    import anyflow
    pipe = WanPipeline.from_pretrained(folder)
"""

from anyflow.vae import LinearPatchVAE

__version__ = "0.1.0"
__all__ = ["LinearPatchVAE", "__version__"]
