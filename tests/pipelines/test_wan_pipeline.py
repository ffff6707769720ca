"""Whole Wan pipelines against diffusers' WanPipeline / WanImageToVideoPipeline (the oracle): the same tiny
random components (UMT5, CLIP, transformer(s), VAE) and seed must give the same frames, also when loaded from
a diffusers folder (save_pretrained) or from Wan's original key names (ComfyUI-style single file)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import PIL.Image
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerFast,
    UMT5Config,
    UMT5EncoderModel,
)

from vidiff.autoencoders.wan_vae import WAN_VAE_PRESETS, WanVAE
from vidiff.cli.main import main
from vidiff.conditioning.text import UMT5TextEncoder
from vidiff.io.wan_keymap import COMFY_PREFIX, transformer_to_original, vae_to_original
from vidiff.io.weights import CheckpointError, load_safetensors
from vidiff.networks.dit_wan import WAN_PRESETS, WanTransformer3D
from vidiff.pipelines.image_to_video import bundled_model_path
from vidiff.pipelines.text_to_video import TextToVideoPipeline
from vidiff.pipelines.wan_loading import is_wan_checkpoint, load_wan_pipeline, load_wan_transformer

TOL = 1e-4
REPO = Path(__file__).resolve().parents[2]
WORDS = ["a", "cat", "dog", "runs", "jumps", "on", "the", "grass", "in", "snow", "red", "blue", "blurry", "static"]


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "scale_shift_table" in name:
                p.copy_(noise)
            elif "gamma" in name or (p.ndim == 1 and name.endswith("weight")):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2:
                p.copy_(noise / math.sqrt(math.prod(p.shape[1:])))
            else:
                p.copy_(0.1 * noise)
    return module.eval()


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def parts() -> dict:
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(WORDS) + 3, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                               num_heads=2, relative_attention_num_buckets=8)).eval()
    vae_ref = _randomize(diffusers.AutoencoderKLWan(**WAN_VAE_PRESETS["tiny-2.1"].to_dict()), 1)
    clip = _randomize(CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                                       num_attention_heads=2, image_size=32, patch_size=16)), 2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return {"tokenizer": _tokenizer(), "text_encoder": text_encoder, "vae_ref": vae_ref, "clip": clip,
            "processor": processor}


def _transformer(preset: str, seed: int, **changes) -> tuple[torch.nn.Module, WanTransformer3D]:
    cfg = WAN_PRESETS[preset].replace(**changes)
    ref = _randomize(diffusers.WanTransformer3DModel(**cfg.to_dict()), seed)
    ours = WanTransformer3D(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _vae(parts: dict) -> WanVAE:
    vae = WanVAE(WAN_VAE_PRESETS["tiny-2.1"]).eval()
    vae.load_state_dict(parts["vae_ref"].state_dict(), strict=True)
    return vae


def _assert_same_frames(ours: np.ndarray, ref: np.ndarray) -> None:
    assert ours.shape == ref.shape
    assert ref.std() > 0.05  # a real video, not a constant
    assert np.abs(ours - ref).max() <= TOL


ARGS = {"height": 16, "width": 32, "num_frames": 9, "num_inference_steps": 3, "max_sequence_length": 24}


@pytest.mark.parametrize("two_experts", [False, True], ids=["wan2.1-t2v", "wan2.2-t2v-a14b"])
def test_text_to_video_matches_diffusers(parts: dict, two_experts: bool) -> None:
    ref_t, ours_t = _transformer("tiny-t2v", 3)
    extra_ref, extra_ours = {}, {}
    if two_experts:  # boundary 0.875 (Wan 2.2 T2V): step 0 on the high-noise expert, the rest on the low
        ref_2, ours_2 = _transformer("tiny-t2v", 4)
        extra_ref = {"transformer_2": ref_2, "boundary_ratio": 0.875}
        extra_ours = {"transformer_2": ours_2, "boundary_ratio": 0.875}
    ref = diffusers.WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                vae=parts["vae_ref"], transformer=ref_t,
                                scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0), **extra_ref)
    ref.set_progress_bar_config(disable=True)
    ours = TextToVideoPipeline(ours_t, _vae(parts), parts["text_encoder"], parts["tokenizer"], flow_shift=5.0,
                               **extra_ours)
    kwargs = {"prompt": "a red cat runs on the grass", "negative_prompt": "blurry static", "guidance_scale": 4.0,
              **ARGS}
    if two_experts:
        kwargs["guidance_scale_2"] = 2.0
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(7)).frames
    out = ours(**kwargs, generator=torch.Generator().manual_seed(7)).frames
    _assert_same_frames(out, expected)
    if two_experts:  # the switch matters: the low-noise expert alone gives another video
        alone = TextToVideoPipeline(ours_t, _vae(parts), parts["text_encoder"], parts["tokenizer"], flow_shift=5.0)
        assert np.abs(alone(**kwargs, generator=torch.Generator().manual_seed(7)).frames - expected).max() > 1e-3


def test_image_to_video_wan21_matches_diffusers(parts: dict) -> None:
    """Wan 2.1 I2V: mask + image latent channels and CLIP penultimate tokens through the image attention."""
    ref_t, ours_t = _transformer("tiny-i2v", 5)
    ref = diffusers.WanImageToVideoPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                            vae=parts["vae_ref"], transformer=ref_t,
                                            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                            image_encoder=parts["clip"], image_processor=parts["processor"])
    ref.set_progress_bar_config(disable=True)
    ours = TextToVideoPipeline(ours_t, _vae(parts), parts["text_encoder"], parts["tokenizer"], flow_shift=3.0,
                               image_encoder=parts["clip"], image_processor=parts["processor"])
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8))
    # diffusers' I2V attention takes the last 512 tokens as text, and its prompt cleaning needs ftfy (not
    # installed): both pipelines get the same 512-token UMT5 embeddings (text encoding is checked above).
    encode = UMT5TextEncoder(parts["tokenizer"], parts["text_encoder"])
    kwargs = {"prompt_embeds": encode("a dog jumps in snow", 512), "negative_prompt_embeds": encode("", 512),
              "image": image, "guidance_scale": 3.0, **ARGS, "max_sequence_length": 512}
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(11)).frames
    out = ours(**kwargs, generator=torch.Generator().manual_seed(11)).frames
    _assert_same_frames(out, expected)


def test_bad_requests_are_named(parts: dict) -> None:
    _, ours_t = _transformer("tiny-t2v", 3)
    no_text = TextToVideoPipeline(ours_t, _vae(parts))
    with pytest.raises(ValueError, match="no text encoder"):
        no_text(prompt="a cat", **{**ARGS, "num_inference_steps": 1})
    with pytest.raises(ValueError, match="num_frames=8"):
        no_text(prompt_embeds=torch.zeros(1, 4, 16), **{**ARGS, "num_frames": 8})
    with pytest.raises(ValueError, match="takes no image"):
        no_text(prompt_embeds=torch.zeros(1, 4, 16), image=PIL.Image.new("RGB", (32, 16)), **ARGS)


def test_diffusers_folder_and_original_files_give_diffusers_frames(parts: dict, tmp_path) -> None:
    ref_t, _ = _transformer("tiny-t2v", 3)
    # Wan's diffusers folders ship UniPC (flow sigmas, shift 3 for 480p)
    unipc = diffusers.UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    ref = diffusers.WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                vae=parts["vae_ref"], transformer=ref_t, scheduler=unipc)
    ref.set_progress_bar_config(disable=True)
    ref.save_pretrained(tmp_path / "diffusers")
    kwargs = {"prompt": "a blue dog on the grass", "guidance_scale": 2.0, **ARGS}
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(3)).frames

    assert is_wan_checkpoint(tmp_path / "diffusers")
    pipe = load_wan_pipeline(tmp_path / "diffusers")
    assert (pipe.flow_shift, pipe.sampler) == (3.0, "unipc")
    assert np.abs(pipe(**kwargs, generator=torch.Generator().manual_seed(3)).frames - expected).max() <= 1e-4

    # Original layout: ComfyUI-prefixed Wan keys in one file, the VAE in Wan's keys; no text encoder.
    single = tmp_path / "wan_tiny_comfy.safetensors"
    save_file({COMFY_PREFIX + k: v.contiguous() for k, v in transformer_to_original(ref_t.state_dict()).items()},
              single)
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    (vae_dir / "config.json").write_text(json.dumps(WAN_VAE_PRESETS["tiny-2.1"].to_dict()))
    vae_sd = vae_to_original(parts["vae_ref"].state_dict(), num_levels=3, num_res_blocks=1)
    save_file({k: v.contiguous() for k, v in vae_sd.items()}, vae_dir / "diffusion_pytorch_model.safetensors")
    assert is_wan_checkpoint(single)
    # the file holds no config; tiny heads are not the released 128 wide, so the shape is given
    original = load_wan_pipeline(single, vae=vae_dir, transformer_config=WAN_PRESETS["tiny-t2v"])
    assert (original.flow_shift, original.sampler) == (5.0, "flow_euler")  # no scheduler config: defaults
    original.flow_shift, original.sampler = 3.0, "unipc"
    embeds = {"prompt_embeds": pipe.encode_prompt(kwargs["prompt"], ARGS["max_sequence_length"]),
              "negative_prompt_embeds": pipe.encode_prompt([""], ARGS["max_sequence_length"])}
    args = {k: v for k, v in kwargs.items() if k != "prompt"}
    out = original(**embeds, **args, generator=torch.Generator().manual_seed(3)).frames
    assert np.abs(out - expected).max() <= 1e-4
    with pytest.raises(ValueError, match="no text encoder"):
        original(**kwargs)

    # A VAE of another Wan version (other latent width) is refused, naming the file.
    other = tmp_path / "vae_other"
    other.mkdir()
    cfg = WAN_VAE_PRESETS["tiny-2.1"].replace(z_dim=6, latents_mean=(0.0,) * 6, latents_std=(1.0,) * 6)
    (other / "config.json").write_text(json.dumps(cfg.to_dict()))
    other_vae = _randomize(diffusers.AutoencoderKLWan(**cfg.to_dict()), 0)
    save_file({k: v.contiguous() for k, v in other_vae.state_dict().items()},
              other / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="not of the same Wan version"):
        load_wan_pipeline(single, vae=other, transformer_config=WAN_PRESETS["tiny-t2v"])


@pytest.fixture(scope="module")
def wan_folder(parts: dict, tmp_path_factory: pytest.TempPathFactory):
    ref_t, _ = _transformer("tiny-t2v", 3)
    pipe = diffusers.WanPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                 vae=parts["vae_ref"], transformer=ref_t,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    folder = tmp_path_factory.mktemp("wan") / "tiny-wan"
    pipe.save_pretrained(folder)
    return folder


def test_cli_generate_prompt_writes_the_pipeline_video(wan_folder, tmp_path) -> None:
    """A real ``vidiff generate --prompt`` process; its png frames hold the pipeline's frames (8-bit)."""
    out = tmp_path / "frames"
    small = ["--height", "16", "--width", "32", "--num-frames", "9", "--steps", "2", "--seed", "5"]
    cmd = [sys.executable, "-m", "vidiff.cli.main", "generate", "--prompt", "a cat runs", "--model", str(wan_folder),
           "--output", f"{out}/", "--guidance-scale", "2", "--max-memory", "8GiB", *small]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    frames = np.stack([np.asarray(PIL.Image.open(f), dtype=np.float32) / 255 for f in sorted(out.glob("*.png"))])
    expected = load_wan_pipeline(wan_folder)(prompt="a cat runs", guidance_scale=2.0, height=16, width=32,
                                             num_frames=9, num_inference_steps=2,
                                             generator=torch.Generator().manual_seed(5)).frames[0]
    assert frames.shape[0] == 9
    assert np.abs(frames - expected).max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    sidecar = json.loads((out / "settings.json").read_text())
    assert sidecar["flow_shift"] == 3.0
    assert sidecar["max_memory"] == "8GiB" and "decode_chunk_size=all" in sidecar["memory_plan"]  # roomy: fastest
    cuda = torch.cuda.is_available()  # --device auto: CUDA where there is one, and bfloat16 there
    assert (sidecar["device"], sidecar["dtype"]) == (("cuda", "bfloat16") if cuda else ("cpu", "float32"))


def test_cli_generate_prompt_parallel_writes_the_one_process_video(wan_folder, tmp_path) -> None:
    """``torchrun --nproc-per-node 2 vidiff generate --prompt ... --parallel cfg|frames`` (frames: the DiT's
    tokens, DeepSpeed-Ulysses); in both modes the causal VAE's decode by blocks of latent frames over both ranks
    (5 latents here): rank 0 alone writes the one-process frames and records the split."""
    small = ["--prompt", "a cat runs", "--model", str(wan_folder), "--height", "16", "--width", "32",
             "--num-frames", "17", "--steps", "2", "--seed", "5", "--guidance-scale", "2"]
    one = tmp_path / "one"
    assert main(["generate", *small, "--output", f"{one}/"]) == 0
    expected = np.stack([np.asarray(PIL.Image.open(f), dtype=np.float32) for f in sorted(one.glob("*.png"))])
    for mode in ("cfg", "frames"):
        out = tmp_path / mode / "frames"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "vidiff.cli.main", "generate", *small, "--output", f"{out}/", "--parallel", mode]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert [p.name for p in (tmp_path / mode).iterdir()] == ["frames"]  # written once, by rank 0
        frames = np.stack([np.asarray(PIL.Image.open(f), dtype=np.float32) for f in sorted(out.glob("*.png"))])
        assert frames.shape == expected.shape and np.abs(frames - expected).max() <= 1  # one 8-bit level at most
        record = json.loads((out / "settings.json").read_text())["parallel"]
        assert record["mode"] == mode and record["world_size"] == 2
        assert record["decode_ranks"] == 2  # under cfg too: both ranks hold the guided latents


@pytest.mark.parametrize(("extra", "message"), [
    (["--num-frames", "8"], "num_frames=8"),
    (["--max-memory", "1MiB"], "the most frugal controls need about"),
    (["--model", "BUNDLED"], "not a text-to-video model"),
    (["--model", "NO_TEXT"], "has no text encoder"),
    (["--model", "SINGLE", "--vae", "OTHER_VAE"], "not of the same Wan version"),
    (["--device", "cuda:99"], "CUDA device"),  # --device is honoured (it was ignored: every run on the CPU)
])
def test_cli_bad_prompt_requests_exit_2(wan_folder, tmp_path, capsys, extra, message) -> None:
    paths = {"BUNDLED": str(bundled_model_path()), "NO_TEXT": str(tmp_path / "no_text"),
             "SINGLE": str(tmp_path / "t.safetensors"), "OTHER_VAE": str(tmp_path / "vae")}
    if "NO_TEXT" in extra:
        shutil.copytree(wan_folder, tmp_path / "no_text", ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    if "SINGLE" in extra:  # a transformer of 4 latent channels with a VAE of 6 (another Wan generation)
        cfg = WAN_PRESETS["tiny-t2v"].replace(num_attention_heads=1, attention_head_dim=128)
        save_file(transformer_to_original(diffusers.WanTransformer3DModel(**cfg.to_dict()).state_dict()),
                  tmp_path / "t.safetensors")
        vcfg = WAN_VAE_PRESETS["tiny-2.1"].replace(z_dim=6, latents_mean=(0.0,) * 6, latents_std=(1.0,) * 6)
        (tmp_path / "vae").mkdir()
        (tmp_path / "vae" / "config.json").write_text(json.dumps(vcfg.to_dict()))
        save_file(diffusers.AutoencoderKLWan(**vcfg.to_dict()).state_dict(),
                  tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    args = ["generate", "--prompt", "a cat", "--model", str(wan_folder), "--output", str(tmp_path / "o.mp4"),
            "--height", "16", "--width", "32", "--num-frames", "9", "--steps", "1"]
    args += [paths.get(a, a) for a in extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if not line.startswith("Loading weights")]  # transformers' bar
    assert message in err and len(lines) == 1
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "o.mp4.json").exists()


def test_cli_info_describes_wan_models(wan_folder, tmp_path, capsys) -> None:
    assert main(["info", str(wan_folder), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    ref_t, _ = _transformer("tiny-t2v", 3)
    assert info["layout"] == "diffusers" and info["model_type"] == "wan2.1-t2v"
    assert info["components"]["transformer"]["parameters"] == sum(p.numel() for p in ref_t.parameters())
    assert info["components"]["transformer"]["config"]["num_layers"] == 2
    single = tmp_path / "i2v.safetensors"
    cfg = WAN_PRESETS["tiny-i2v"].replace(num_attention_heads=1, attention_head_dim=128, added_kv_proj_dim=128)
    save_file({COMFY_PREFIX + k: v for k, v in
               transformer_to_original(diffusers.WanTransformer3DModel(**cfg.to_dict()).state_dict()).items()}, single)
    assert main(["info", str(single), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "original" and info["model_type"] == "wan2.1-i2v"
    assert info["components"]["transformer"]["config"]["image_dim"] == 8


def test_ti2v_image_to_video_wan22_matches_diffusers(parts: dict) -> None:
    """Wan 2.2 TI2V: the 2.2 VAE (patchified), the image's latent as frame 0 at timestep 0 (expand_timesteps)."""
    ref_t, ours_t = _transformer("tiny-t2v", 6)
    vae_ref = _randomize(diffusers.AutoencoderKLWan(**WAN_VAE_PRESETS["tiny-2.2"].to_dict()), 7)
    vae = WanVAE(WAN_VAE_PRESETS["tiny-2.2"]).eval()
    vae.load_state_dict(vae_ref.state_dict(), strict=True)
    ref = diffusers.WanImageToVideoPipeline(tokenizer=parts["tokenizer"], text_encoder=parts["text_encoder"],
                                            vae=vae_ref, transformer=ref_t, expand_timesteps=True,
                                            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=5.0))
    ref.set_progress_bar_config(disable=True)
    ours = TextToVideoPipeline(ours_t, vae, parts["text_encoder"], parts["tokenizer"], expand_timesteps=True)
    image = PIL.Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 32, 3), dtype=np.uint8))
    encode = UMT5TextEncoder(parts["tokenizer"], parts["text_encoder"])  # diffusers' I2V prompt cleaning needs ftfy
    kwargs = {"prompt_embeds": encode("a cat in snow", 24), "negative_prompt_embeds": encode("", 24),
              "image": image, "guidance_scale": 3.0, **ARGS}
    expected = ref(**kwargs, generator=torch.Generator().manual_seed(2)).frames
    out = ours(**kwargs, generator=torch.Generator().manual_seed(2)).frames
    _assert_same_frames(out, expected)


def test_cli_convert_wan_between_layouts(wan_folder, tmp_path, capsys) -> None:
    """diffusers folder -> original single file -> diffusers transformer folder: tensors bit for bit."""
    single, back = tmp_path / "wan.safetensors", tmp_path / "transformer"
    assert main(["convert", str(wan_folder), str(single), "--to", "single-file"]) == 0
    assert main(["convert", str(single), str(back), "--to", "diffusers"]) == 0
    original = load_wan_transformer(wan_folder / "transformer")
    assert "blocks.0.self_attn.q.weight" in load_safetensors(single)
    again = load_wan_transformer(back)
    assert again.config == original.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), original.state_dict().values(),
                                                 strict=True))
    capsys.readouterr()
    before = single.read_bytes()
    assert main(["convert", str(back), str(single), "--to", "single-file"]) == 2  # exists, no --overwrite
    assert "already exists" in capsys.readouterr().err and single.read_bytes() == before


def test_the_pipeline_moves_every_component(wan_folder) -> None:
    """``pipe.to(device)``: transformer, VAE and text encoder together (the CLI's ``--device``), each keeping its
    dtype; a CUDA device on a machine without one is a ValueError naming it."""
    pipe = load_wan_pipeline(wan_folder, dtype=torch.bfloat16)
    assert pipe.to("cpu") is pipe and pipe.device == torch.device("cpu")
    modules = {"transformer": pipe.transformer, "vae": pipe.vae, "text": pipe.text.text_encoder}
    assert {p.device.type for m in modules.values() for p in m.parameters()} == {"cpu"}
    assert next(pipe.transformer.parameters()).dtype == torch.bfloat16
    assert next(pipe.vae.parameters()).dtype == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            pipe.to("cuda")


def test_bench_times_the_transformer_calls_of_a_prompt_run(wan_folder, tmp_path, capsys) -> None:
    """``vidiff bench --prompt``: a guided Wan run of 2 flow-matching Euler steps makes 2 transformer calls on
    batches of 2 (conditional and unconditional together), and the causal VAE decodes once per video."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--prompt", "a cat runs", "--model", str(wan_folder), "--height", "16", "--width", "32",
                 "--num-frames", "9", "--steps", "2", "--guidance-scale", "2", "--repeats", "1", "--warmup", "0",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["network"] == "transformer" and report["settings"]["prompt"] == "a cat runs"
    assert (report["network_calls_per_video"], report["network_batch"]) == (2, 2)
    assert report["frames_per_s"] == pytest.approx(9 / report["video_s"])
    run = report["runs"][0]
    assert run["network_s"] > 0 and run["decode_s"] > 0 and run["network_s"] + run["decode_s"] <= run["video_s"]
    assert "2 calls of batch 2" in capsys.readouterr().out
    assert main(["bench", "--prompt", "a cat", "--model", str(wan_folder), "--offload", "model"]) == 2
    assert "not available for Wan models" in capsys.readouterr().err
