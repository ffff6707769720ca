"""The autoencoders and latents of the frame-parallel decode tests, the same in the test process and in every
rank: tiny random SVD temporal VAE, SD image VAE and flow-warp autoencoder, decoded with given settings."""

from __future__ import annotations

from typing import Any

import torch

from vidiff.autoencoders import (
    AutoencoderKL,
    AutoencoderKLTemporal,
    FlowWarpAutoencoder,
    FlowWarpConfig,
    ImageVAEConfig,
    VAEConfig,
)

TINY_VAE = VAEConfig(block_out_channels=(32, 64), layers_per_block=1)
TINY_IMAGE_VAE = ImageVAEConfig(block_out_channels=(32, 64), layers_per_block=1)
FLOW = FlowWarpConfig(patch_size=4)


def tiny_decode_case(vae: str, frames: int, batch: int = 2, size: int = 8,
                     seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, dict[str, Any]]:
    """``(autoencoder, scaled latents (B, T, C, h, w), decode kwargs)``: ``vae`` is ``temporal`` (SVD's VAE),
    ``image`` (SD's, per frame) or ``flow`` (the flow-warp autoencoder, with its reference image); random,
    non-trivial weights (the learned temporal mix away from 0)."""
    torch.manual_seed(seed)
    model = {"temporal": lambda: AutoencoderKLTemporal(TINY_VAE), "image": lambda: AutoencoderKL(TINY_IMAGE_VAE),
             "flow": lambda: FlowWarpAutoencoder(FLOW)}[vae]().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(seed + 1)
    channels = FLOW.latent_channels if vae == "flow" else TINY_VAE.latent_channels
    z = torch.randn(batch, frames, channels, size, size, generator=g)
    kwargs = {}
    if vae == "flow":
        z = z * 0.05  # displacements of a fraction of the frame
        kwargs["reference"] = torch.rand(batch, 3, size * FLOW.patch_size, size * FLOW.patch_size, generator=g)
    return model, z, kwargs


def decode_frames(case: dict[str, Any], settings: dict[str, Any], *, layout: Any = None,
                  sent: list[int] | None = None, shapes: list[tuple[int, ...]] | None = None) -> torch.Tensor:
    """Pixels of ``tiny_decode_case(**case)`` decoded with ``settings`` (``chunk_size``, ``overlap``, ``tile``:
    latent tile side, 0 for no tiling; ``between``: the flow-warp two-image decode toward a random end image),
    split over all of ``layout``'s ranks when given. Per split call (each
    temporal-decoder call; each whole decode of a per-frame autoencoder) the bytes sent go to ``sent`` and
    ``(batch, frames, h, w)`` of its latents to ``shapes``."""
    from vidiff.parallel.decode import FrameParallelDecode

    vae, z, kwargs = tiny_decode_case(**case)
    if settings.get("tile"):
        vae.tile_latent_size, vae.tile_latent_overlap = settings["tile"], settings["tile"] // 2
    args = (settings.get("chunk_size"), settings.get("overlap", 0))
    options = {"tiled": bool(settings.get("tile")), **kwargs}
    if settings.get("between"):  # a clip ending on a given image: frames drawn from both (flow-warp only)
        g = torch.Generator().manual_seed(case.get("seed", 0) + 2)
        weights = torch.linspace(0, 1, z.shape[1], dtype=torch.float64)
        between_args = (z, kwargs["reference"], torch.rand(kwargs["reference"].shape, generator=g), z[:, -1],
                        weights)
    if layout is None:
        with torch.no_grad():
            if settings.get("between"):
                return vae.decode_latents_between(*between_args)
            return vae.decode_latents(z, *args, **options)
    sent, shapes = [] if sent is None else sent, [] if shapes is None else shapes
    temporal = case["vae"] == "temporal"
    if temporal:  # registered before the split's hooks: sees each whole call, and the bytes after its gather
        def before(module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
            layout.reset_counts()
            t = kwargs["num_frames"]
            shapes.append((args[0].shape[0] // t, t, *args[0].shape[-2:]))

        vae.decoder.register_forward_pre_hook(before, with_kwargs=True)
    split = FrameParallelDecode(vae, layout.world_comm)
    if temporal:
        vae.decoder.register_forward_hook(lambda *_: sent.append(layout.sent))
    layout.reset_counts()
    with torch.no_grad():
        out = split.between(*between_args) if settings.get("between") else split(z, *args, **options)
    if not temporal:
        shapes.append((z.shape[0], z.shape[1], *z.shape[-2:]))
        sent.append(layout.sent)
    split.remove()
    return out


def decode_pipeline(model: str, settings: dict[str, Any], *, layout: Any = None,
                    sent: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(frames in [0, 1], final latents)`` of an image-to-video model on a fixed image; over ``layout``'s
    ranks when given, the UNet and the VAE decode split as ``vidiff generate --parallel`` splits them (the
    bytes sent by the decode alone are appended to ``sent``)."""
    from vidiff.parallel import parallelize
    from vidiff.parallel.decode import parallelize_decode
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(model)
    if layout is not None:
        parallelize(pipe.unet, layout)
        parallelize_decode(pipe, layout)
    final: list[torch.Tensor] = []

    def keep(pipe: Any, i: int, t: torch.Tensor, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        final[:] = [tensors["latents"]]
        if layout is not None:
            layout.reset_counts()  # the last step's: what follows is the decode
        return {}

    image = torch.linspace(0, 1, 3 * 64 * 64).reshape(3, 64, 64)
    frames = pipe(image, output_type="pt", progress=False, callback_on_step_end=keep, **settings).frames
    if layout is not None and sent is not None:
        sent.append(layout.sent)
    return frames, final[0]


def decode_run(run: dict[str, Any], layout: Any) -> dict[str, Any]:
    """One worker run: ``decode`` (:func:`decode_frames`) or ``decode_pipeline`` (:func:`decode_pipeline`,
    whose ``out`` is the pair of frames and latents)."""
    sent: list[int] = []
    shapes: list[tuple[int, ...]] = []
    if run["kind"] == "decode":
        out: Any = decode_frames(run["case"], run["settings"], layout=layout, sent=sent, shapes=shapes)
    else:
        out = decode_pipeline(run["model"], run["settings"], layout=layout, sent=sent)
    return {"out": out, "sent": sent, "shapes": shapes}
