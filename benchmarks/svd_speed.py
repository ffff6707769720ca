"""vidiff against diffusers on the same random weights: UNet step, VAE decode, whole video, memory, first call.

Builds SVD-XT (or a tiny configuration for CPUs) in diffusers with random weights, loads the very same
tensors into vidiff, and measures both in one run, printing a table of the ratios vidiff/diffusers and
the relative error of vidiff's UNet output against diffusers' float32 output on identical inputs.

    python benchmarks/svd_speed.py --config tiny                     # CPU, about a minute
    python benchmarks/svd_speed.py --config svd_xt --device cuda --dtype float16 --json h100.json
    python benchmarks/svd_speed.py --config svd_xt --device cuda --compile blocks --channels-last
    python benchmarks/svd_speed.py --config svd_xt --device cuda --sweep --skip-pipeline   # each switch's step

vidiff runs with the fast-path switches given (``vidiff.networks.fast``; default: fused projections);
``--sweep`` times the UNet step under each combination of them, the measurement its defaults come from.

The reference's numbers on an H100 are in ../shared/reference/anchors.md (686 ms per UNet step eager,
2.37 s to decode 25 frames in chunks of 8, 18.98 s per video at 15.0 GiB).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vidiff.cli.generate import add_fast_path_arguments, fast_path_from_args
from vidiff.networks.fast import FastPath, apply_fast_path

CONFIGS = {
    # name: (UNet preset, VAE channels, VAE layers, CLIP vision config, default (height, width, frames, steps))
    "svd_xt": ("svd_xt", (128, 256, 512, 512), 2,
               dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                    image_size=224, patch_size=14, projection_dim=1024), (576, 1024, 25, 25)),
    "tiny": ("tiny", (32, 32, 64, 64), 1,
             dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=224,
                  patch_size=32, projection_dim=32), (128, 192, 6, 3)),
}


def _timer(device: torch.device) -> Callable[[Callable[[], object], int, int], tuple[float, float]]:
    """``time(fn, warmup, repeats) -> (first_call_s, median_s)`` with CUDA events on GPUs."""

    def run(fn: Callable[[], object], warmup: int, repeats: int) -> tuple[float, float]:
        def once() -> float:
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                return start.elapsed_time(end) / 1000
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t

        first = once()
        for _ in range(max(0, warmup - 1)):
            once()
        return first, statistics.median(once() for _ in range(repeats))

    return run


def _peak(device: torch.device, fn: Callable[[], object]) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**30


def build(config: str, dtype: torch.dtype, device: torch.device):
    """diffusers' and vidiff's UNet and VAE holding the same random tensors."""
    import diffusers

    from vidiff.autoencoders import AutoencoderKLTemporal, VAEConfig
    from vidiff.networks import UNET_PRESETS, UNetSpatioTemporal

    preset, vae_channels, vae_layers, _, _ = CONFIGS[config]
    torch.manual_seed(0)
    ucfg = UNET_PRESETS[preset]
    d_unet = diffusers.UNetSpatioTemporalConditionModel(**ucfg.to_diffusers())
    v_unet = UNetSpatioTemporal(ucfg)
    v_unet.load_state_dict(d_unet.state_dict(), strict=True)
    vcfg = VAEConfig(block_out_channels=vae_channels, layers_per_block=vae_layers)
    d_vae = diffusers.AutoencoderKLTemporalDecoder(**{k: v for k, v in vcfg.to_diffusers().items()})
    with torch.no_grad():
        for p in d_vae.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    v_vae = AutoencoderKLTemporal(vcfg)
    v_vae.load_state_dict(d_vae.state_dict(), strict=True)
    models = [m.to(device=device, dtype=dtype).eval() for m in (d_unet, v_unet, d_vae, v_vae)]
    return (*models, ucfg, vcfg)


def unet_inputs(ucfg, frames: int, h: int, w: int, device: torch.device, dtype: torch.dtype):
    from vidiff.conditioning import Cond, embed_scalars

    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, frames, 4, h, w, generator=g)
    concat = torch.randn(2, frames, 4, h, w, generator=g)
    ctx = torch.randn(2, 1, ucfg.cross_attention_dim, generator=g)
    ids = torch.tensor([[6.0, 127.0, 0.02]] * 2)
    c_noise = torch.tensor([0.25 * torch.log(torch.tensor(700.0)).item()] * 2)
    cast = dict(device=device, dtype=dtype)
    d_args = (torch.cat([x, concat], 2).to(**cast), c_noise.to(device), ctx.to(**cast), ids.to(**cast))
    cond = Cond(crossattn=ctx.to(**cast), vector=embed_scalars(ids, ucfg.addition_time_embed_dim).to(**cast),
                concat=concat.to(**cast))
    return d_args, (x.to(**cast), c_noise.to(device), cond)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: float16 on cuda)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--frames", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--decode-chunk", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    add_fast_path_arguments(p)
    p.add_argument("--sweep", action="store_true", help="also time vidiff's UNet step under each fast-path variant")
    p.add_argument("--skip-pipeline", action="store_true", help="skip the whole-video comparison")
    p.add_argument("--json", help="also write the results here")
    a = p.parse_args()
    device = torch.device(a.device)
    dtype = getattr(torch, a.dtype or ("float16" if device.type == "cuda" else "float32"))
    dh, dw, df, ds = CONFIGS[a.config][4]
    height, width, frames, steps = a.height or dh, a.width or dw, a.frames or df, a.steps or ds
    time_it = _timer(device)
    d_unet, v_unet, d_vae, v_vae, ucfg, vcfg = build(a.config, dtype, device)
    f = vcfg.downsample_factor
    d_args, v_args = unet_inputs(ucfg, frames, height // f, width // f, device, dtype)
    fast = fast_path_from_args(a)
    if a.sweep:
        sweep(v_unet, v_args, time_it, a.warmup, a.repeats, cuda=device.type == "cuda")
    v_call = apply_fast_path(v_unet, fast)
    res: dict[str, dict[str, float | None]] = {}
    with torch.no_grad():
        d_out = d_unet(*d_args[:3], added_time_ids=d_args[3]).sample
        v_out = v_call(*v_args)
        ref32 = d_unet.float()(*(t.float() if t.is_floating_point() else t for t in d_args[:3]),
                               added_time_ids=d_args[3].float()).sample
        d_unet.to(dtype)
        res["unet max rel error vs float32"] = {
            "diffusers": float((d_out.float() - ref32).abs().max() / ref32.abs().max()),
            "vidiff": float((v_out.float() - ref32).abs().max() / ref32.abs().max())}
        d_first, d_step = time_it(lambda: d_unet(*d_args[:3], added_time_ids=d_args[3]), a.warmup, a.repeats)
        v_first, v_step = time_it(lambda: v_call(*v_args), a.warmup, a.repeats)
        res["unet step (s, CFG batch 2)"] = {"diffusers": d_step, "vidiff": v_step}
        res["unet first call (s)"] = {"diffusers": d_first, "vidiff": v_first}
        res["unet peak (GiB)"] = {"diffusers": _peak(device, lambda: d_unet(*d_args[:3], added_time_ids=d_args[3])),
                                  "vidiff": _peak(device, lambda: v_call(*v_args))}
        z = torch.randn(frames, vcfg.latent_channels, height // f, width // f, device=device, dtype=dtype)
        c = a.decode_chunk

        def d_decode() -> None:
            for i in range(0, frames, c):
                d_vae.decode(z[i:i + c], num_frames=len(z[i:i + c]))

        res[f"decode {frames} frames, chunks of {c} (s)"] = {
            "diffusers": time_it(d_decode, 1, a.repeats)[1],
            "vidiff": time_it(lambda: v_vae.decode(z[None], chunk_size=c), 1, a.repeats)[1]}
        res["decode peak (GiB)"] = {"diffusers": _peak(device, d_decode),
                                    "vidiff": _peak(device, lambda: v_vae.decode(z[None], chunk_size=c))}
    if not a.skip_pipeline:
        res.update(_whole_video(a.config, d_unet, d_vae, device, dtype, height, width, frames, steps, c, fast))
    rows = [(k, v["diffusers"], v["vidiff"]) for k, v in res.items()]
    print(f"{a.config}: {frames} frames at {width}x{height}, {steps} steps, {dtype} on {device}; "
          f"vidiff fast path: {fast.describe()}")
    print(f"{'metric':<40} {'diffusers':>12} {'vidiff':>12} {'vidiff/diffusers':>17}")
    for name, d, v in rows:
        ratio = f"{v / d:.3f}" if d and v is not None else "-"
        print(f"{name:<40} {_fmt(d, name):>12} {_fmt(v, name):>12} {ratio:>17}")
    if a.json:
        Path(a.json).write_text(json.dumps({"config": a.config, "device": str(device), "dtype": str(dtype),
                                            "height": height, "width": width, "frames": frames, "steps": steps,
                                            "fast_path": fast.describe(), "results": res}, indent=1))


def _fmt(x: float | None, name: str) -> str:
    return "-" if x is None else (f"{x:.2e}" if "error" in name else f"{x:.4f}")


def sweep(unet, args, time_it, warmup: int, repeats: int, *, cuda: bool) -> None:
    """Print vidiff's UNet step (first call, median) under each fast-path variant."""
    variants = [FastPath(fuse_projections=False), FastPath(), FastPath(channels_last=True),
                FastPath(compile="blocks"), FastPath(channels_last=True, compile="blocks"),
                FastPath(channels_last=True, compile="unet")]
    if cuda:
        variants.append(FastPath(channels_last=True, compile="blocks", compile_mode="reduce-overhead"))
    print(f"{'vidiff fast path':<60} {'first call (s)':>15} {'step (s)':>10}")
    with torch.no_grad():
        for fast in variants:
            torch._dynamo.reset()
            apply_fast_path(unet, fast)
            first, step = time_it(lambda: unet(*args), warmup, repeats)
            print(f"{fast.describe():<60} {first:>15.3f} {step:>10.4f}")


def _whole_video(config: str, d_unet, d_vae, device, dtype, height, width, frames, steps, chunk, fast):
    """One video through each pipeline from the same saved folder (CLIP included), wall clock."""
    import diffusers
    import transformers

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    clip_cfg = transformers.CLIPVisionConfig(**CONFIGS[config][3], hidden_act="gelu", layer_norm_eps=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = diffusers.StableVideoDiffusionPipeline(
            vae=d_vae.float(), unet=d_unet.float(), image_encoder=transformers.CLIPVisionModelWithProjection(clip_cfg),
            scheduler=diffusers.EulerDiscreteScheduler(
                beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
                use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading",
                steps_offset=1, timestep_type="continuous"),
            feature_extractor=transformers.CLIPImageProcessor())
        pipe.save_pretrained(tmp)
        pipe = pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        ours = ImageToVideoPipeline.from_pretrained(tmp, dtype=dtype, device=device, fast_path=fast)
        image = torch.rand(3, height, width)
        import PIL.Image

        pil = PIL.Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8"))
        kw = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps, decode_chunk_size=chunk)

        def run_d() -> None:
            pipe(pil, generator=torch.Generator().manual_seed(0), output_type="pt", **kw)

        def run_v() -> None:
            ours(pil, generator=torch.Generator().manual_seed(0), output_type="pt", progress=False, **kw)

        time_it = _timer(device)
        out = {"whole video (s)": {"diffusers": time_it(run_d, 1, 1)[1], "vidiff": time_it(run_v, 1, 1)[1]},
               "whole video peak (GiB)": {"diffusers": _peak(device, run_d), "vidiff": _peak(device, run_v)}}
    return out


if __name__ == "__main__":
    main()
