"""GPU check: precision, decode speed against the bandwidth limit, peak memory per profile, and
the de-tokenizer against diffusers' own SDXL pipeline, in one command and one JSON file.

    python benchmarks/gpu_check.py                 # a CUDA machine: full sizes, ~3-5 minutes
    python benchmarks/gpu_check.py --dry           # CPU, small sizes, the same code (the tests)

Sections (``--sections``, all by default; each is timed, and one that fails records its error
and lets the others run):

* ``greedy``: the tiny and Nano stacks give the same greedy tokens in bf16 on the device as in
  fp32 on the CPU, on fixed prompts (text, and an image question for the Nano). Where they part,
  the check records the step and the fp32 margin between the two candidates there: bf16 keeps 8
  bits of mantissa, so a flip is *explained* when that margin is within
  ``4 * 2**-8 * max|logit|`` (four roundings of the largest logit), and *unexplained* otherwise.
* ``bandwidth``: device-to-device copy bandwidth, measured (and the datasheet figure if the
  device is known), the ceiling for batch-1 decoding, which reads every weight once per token.
* ``decode``: batch-1 greedy decode tokens/s of a full-size random-weight Llama-2-13B (SEED-X's
  LLM shapes) in bf16 and in bitsandbytes NF4, and its ratio to the bandwidth limit
  ``bandwidth / bytes read per token`` (weights + the KV cache at that length).
* ``detokenizer``: seconds per image of our stage-1 loop against ``StableDiffusionXLPipeline``
  with the same UNet, VAE, scheduler, steps, guidance and conditioning (full-size SDXL shapes,
  random weights, 1024x1024), interleaved; the ratio is ours / diffusers'.
* ``profiles``: for each memory profile (``seedx_agent.placement``), the full-size components
  built on the device as the profile places them (random weights), one ViT view, an LLM prefill
  and decode, one guided UNet step at 1024x1024 and a VAE decode; the measured peak per device
  beside ``seedx plan``'s estimate for the same profile.

With ``--dry`` everything runs on the CPU at small sizes (the tiny stack's shapes for the
random-weight parts), so the tests run every line of it; the numbers then mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

SECTIONS = ("greedy", "bandwidth", "decode", "detokenizer", "profiles")
SCENE = ROOT / "examples" / "nano" / "scene.png"
# Datasheet HBM bandwidth, bytes/s; the measured copy bandwidth is what the ratio uses.
DATASHEET_BANDWIDTH = {"H200": 4.8e12, "H100 SXM": 3.35e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
                       "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12,
                       "L40S": 0.864e12, "RTX 4090": 1.008e12, "A10G": 0.6e12, "L4": 0.3e12}


# --- timing and devices --------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers, each storage once (bitsandbytes' NF4 blocks
    scales live in ``quant_state``, counted too)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        key = (t.device, t.data_ptr())
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
        state = getattr(t, "quant_state", None)
        if state is not None:
            for part in (state.absmax, getattr(state, "code", None),
                         getattr(getattr(state, "state2", None), "absmax", None)):
                if isinstance(part, torch.Tensor):
                    total += part.numel() * part.element_size()
    return total


def free(device: str) -> None:
    import gc
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# --- greedy tokens: bf16 on the device against fp32 on the CPU --------------------------------
def greedy_prompts(name: str) -> list[dict]:
    prompts = [dict(text="Describe a red circle on a white background."),
               dict(text="Where is the blue square?")]
    if name == "nano":
        prompts += [dict(text="Where is the red circle?", image=str(SCENE)),
                    dict(text="Describe the image.", image=str(SCENE))]
    return prompts


def greedy_run(runtime, prompt: dict, max_new_tokens: int) -> tuple[list[int], torch.Tensor]:
    from PIL import Image

    from core_models.any_res import image_token_block, process_anyres_image
    from core_models.generation import generate
    from core_models.mllm import ContinuousLVLM

    stack, tok, cfg = runtime.stack, runtime.tokenizer, runtime.config
    agent = stack.agent
    kwargs: dict[str, Any] = {}
    block = ""
    if "image" in prompt:
        ar = process_anyres_image(Image.open(prompt["image"]).convert("RGB"),
                                  cfg.resolution_grids, cfg.base_resolution)
        block = image_token_block(ar.num_views, cfg.num_img_tokens)
        vit_param = next(stack.vit.parameters())
        with torch.no_grad():
            feats = stack.vit(ar.pixel_values.to(vit_param.device, vit_param.dtype))
        kwargs = dict(image_embeds=feats, embeds_cmp_mask=torch.ones(feats.shape[0], dtype=torch.bool),
                      patch_positions=ar.patch_positions)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(f"[INST] {block}{prompt['text']} [/INST]\n")])
    if kwargs:
        kwargs["ids_cmp_mask"] = ContinuousLVLM.build_ids_cmp_mask(
            ids, tok.boi_token_id, tok.eoi_token_id, tok.bop_token_id, tok.eop_token_id)
    with torch.no_grad():
        result = generate(agent, tok, ids, max_new_tokens=max_new_tokens,
                          num_img_gen_tokens=cfg.num_img_tokens, record_logits=True, **kwargs)
    return result.generated_ids, result.raw_logits.float().cpu()


def compare_greedy(ref: tuple[list[int], torch.Tensor], test: tuple[list[int], torch.Tensor]) -> dict:
    (ref_ids, ref_logits), (test_ids, _) = ref, test
    diverge = next((i for i, (a, b) in enumerate(zip(ref_ids, test_ids)) if a != b), None)
    if diverge is None and len(ref_ids) != len(test_ids):
        diverge = min(len(ref_ids), len(test_ids))  # one stopped (EOS) where the other went on
    out: dict[str, Any] = dict(tokens=len(ref_ids), same=diverge is None, first_difference=diverge)
    if diverge is not None and diverge < len(ref_logits) and diverge < len(test_ids):
        row = ref_logits[diverge]
        margin = float(row[ref_ids[diverge]] - row[test_ids[diverge]])
        bound = 4 * 2 ** -8 * float(row.abs().max())
        out.update(fp32_margin=round(margin, 5), bf16_bound=round(bound, 5), explained=margin <= bound)
    elif diverge is not None:
        out.update(explained=False, note="lengths differ without a logit to compare")
    return out


def section_greedy(device: str, dry: bool, max_new_tokens: int) -> dict:
    import seedx_agent
    from seedx_agent.placement import Placement

    test_placement = Placement.cpu("bfloat16") if dry else Placement.gpu(
        int(device.split(":")[1]) if ":" in device else 0, dtype="bfloat16")
    out: dict[str, Any] = dict(reference="fp32 on cpu", test=test_placement.describe())
    for name in ("tiny", "nano"):
        ref_rt = seedx_agent.from_pretrained(name, placement=Placement.cpu())
        refs = [greedy_run(ref_rt, p, max_new_tokens) for p in greedy_prompts(name)]
        del ref_rt
        test_rt = seedx_agent.from_pretrained(name, placement=test_placement)
        cases = []
        for prompt, ref in zip(greedy_prompts(name), refs):
            case = compare_greedy(ref, greedy_run(test_rt, prompt, max_new_tokens))
            cases.append(dict(prompt=prompt["text"], image="image" in prompt, **case))
        del test_rt
        free(device)
        out[name] = dict(cases=cases, all_same=all(c["same"] for c in cases),
                         all_explained=all(c["same"] or c.get("explained") for c in cases))
    return out


# --- bandwidth ------------------------------------------------------------------------------------
def datasheet_bandwidth(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(DATASHEET_BANDWIDTH, key=len, reverse=True):
        if key in name:
            return DATASHEET_BANDWIDTH[key]
    return None


def section_bandwidth(device: str, dry: bool) -> dict:
    n = (64 if dry else 2048) * 2 ** 20  # bytes per buffer
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)  # warm-up
    reps = 3 if dry else 20
    seconds, _ = timed(device, lambda: [dst.copy_(src) for _ in range(reps)])
    measured = 2 * n * reps / seconds  # each copy reads and writes n bytes
    src = dst = None
    free(device)
    return dict(bytes_per_copy=n, copies=reps, measured_bytes_per_s=measured,
                datasheet_bytes_per_s=datasheet_bandwidth(device))


# --- full-size random-weight parts ---------------------------------------------------------------
def seedx_config(dry: bool):
    from core_models.config import SeedXConfig
    return SeedXConfig.tiny() if dry else SeedXConfig.official()


def random_llm(config, device: str, dtype: torch.dtype):
    """SEED-X's LLM shapes with random weights, built directly on ``device`` in ``dtype``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from core_models.mllm import default_dtype

    with torch.device(device), default_dtype(dtype):
        model = LlamaForCausalLM(LlamaConfig(**config.llm))
    return model.eval()


def to_nf4(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """The decoder's linear layers as bitsandbytes NF4 through the product's own quantized-load
    step (`core_models.quantization.quantize_llm`: layer by layer, so the bf16 copy is never
    held twice; embeddings, lm_head and norms stay bf16)."""
    from core_models.quantization import quantize_llm

    quantize_llm(model, {"method": "nf4"}, device=device, compute_dtype=torch.bfloat16)
    free(device)
    return model


@torch.no_grad()
def decode_rate(model, device: str, prompt_tokens: int, new_tokens: int) -> dict:
    from transformers import DynamicCache

    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)
    cache = DynamicCache(config=model.config)
    logits = model(input_ids=ids, past_key_values=cache, use_cache=True).logits[:, -1]
    nxt = logits.argmax(-1, keepdim=True)
    for _ in range(3):  # warm-up steps (kernels, allocator)
        nxt = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)

    def run():
        token = nxt
        for _ in range(new_tokens):
            token = model(input_ids=token, past_key_values=cache,
                          use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
        return token

    seconds, _ = timed(device, run)
    cfg = model.config
    context = prompt_tokens + 3 + new_tokens // 2  # the mean KV length over the timed steps
    kv_bytes = 2 * cfg.num_hidden_layers * context * cfg.num_key_value_heads * (
        cfg.hidden_size // cfg.num_attention_heads) * model.model.embed_tokens.weight.element_size()
    # every decoder weight and lm_head is read once per token; of the embedding only one row
    weight_bytes = tensor_bytes(model) - tensor_bytes(model.model.embed_tokens)
    return dict(tokens_per_s=new_tokens / seconds, new_tokens=new_tokens, prompt_tokens=prompt_tokens,
                bytes_per_token=weight_bytes + kv_bytes, weight_bytes=tensor_bytes(model))


def section_decode(device: str, dry: bool, bandwidth: dict | None, new_tokens: int) -> dict:
    config = seedx_config(dry)
    dtype = torch.bfloat16
    out: dict[str, Any] = dict(shapes="tiny" if dry else "official (Llama-2-13B, vocab 32330)")
    bw = (bandwidth or {}).get("measured_bytes_per_s")
    for label in ("bf16", "nf4"):
        model = random_llm(config, device, dtype)
        if label == "nf4":
            model = to_nf4(model, device)
        rate = decode_rate(model, device, prompt_tokens=16 if dry else 128, new_tokens=new_tokens)
        if bw:
            limit = bw / rate["bytes_per_token"]
            rate.update(bandwidth_limit_tokens_per_s=limit, ratio_to_limit=rate["tokens_per_s"] / limit)
        out[label] = rate
        del model
        free(device)
    return out


# --- de-tokenizer against diffusers' StableDiffusionXLPipeline -----------------------------------
def random_detokenizer(config, device: str, dtype: torch.dtype):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler

    from core_models.detokenizer import SDXLAdapter
    from core_models.mllm import default_dtype

    with torch.device(device), default_dtype(dtype):
        adapter = SDXLAdapter.from_config(config, device=device).eval()
        vae = AutoencoderKL(**config.vae).eval()
    adapter.init_pipe(vae=vae, scheduler=EulerDiscreteScheduler.from_config(dict(config.scheduler)))
    return adapter


def random_embeds(adapter, device: str, dtype: torch.dtype):
    from core_models.detokenizer import ImageEmbeds

    g = torch.Generator().manual_seed(0)
    resampler = adapter.resampler
    width = resampler.output1_dim + resampler.output2_dim if hasattr(resampler, "output1_dim") else None
    q = resampler.num_queries if hasattr(resampler, "num_queries") else 64
    pooled = adapter.unet.add_embedding.linear_1.in_features - 6 * adapter.unet.config.addition_time_embed_dim
    width = width or adapter.unet.config.cross_attention_dim
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return ImageEmbeds(prompt_embeds=make(1, q, width), pooled_prompt_embeds=make(1, pooled),
                       negative_prompt_embeds=make(1, q, width),
                       negative_pooled_prompt_embeds=make(1, pooled))


def section_detokenizer(device: str, dry: bool, steps: int, reps: int) -> dict:
    from diffusers import StableDiffusionXLPipeline

    config = seedx_config(dry)
    dtype = torch.float32 if dry else torch.bfloat16
    size = config.image_size if dry else 1024
    adapter = random_detokenizer(config, device, dtype)
    embeds = random_embeds(adapter, device, dtype)
    pipe = StableDiffusionXLPipeline(vae=adapter.vae, unet=adapter.unet,
                                     scheduler=type(adapter.scheduler).from_config(adapter.scheduler.config),
                                     text_encoder=None, text_encoder_2=None, tokenizer=None,
                                     tokenizer_2=None, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    common = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size)

    def ours():
        return adapter.generate_from_embeds(embeds, generator=torch.Generator(device).manual_seed(1),
                                            output_type="latent", **common)

    def theirs():
        return pipe(prompt_embeds=embeds.prompt_embeds, negative_prompt_embeds=embeds.negative_prompt_embeds,
                    pooled_prompt_embeds=embeds.pooled_prompt_embeds,
                    negative_pooled_prompt_embeds=embeds.negative_pooled_prompt_embeds,
                    generator=torch.Generator(device).manual_seed(1), output_type="latent",
                    **common).images

    with torch.no_grad():
        a, b = ours(), theirs()  # warm-up, and the same work: the same latents
        same = float((a.float() - b.float()).abs().max())
        times: dict[str, list[float]] = {"ours": [], "diffusers": []}
        for _ in range(reps):
            times["ours"].append(timed(device, ours)[0])
            times["diffusers"].append(timed(device, theirs)[0])
    adapter = pipe = None
    free(device)
    best = {k: min(v) for k, v in times.items()}
    return dict(size=size, steps=steps, guidance=7.5, dtype=str(dtype), reps=reps,
                times_s=times, best_s=best, ratio_ours_over_diffusers=best["ours"] / best["diffusers"],
                max_latent_difference=same)


# --- peak memory per profile ----------------------------------------------------------------------
def section_profiles(device: str, dry: bool, steps: int) -> dict:
    """Each profile's stack built as it places it (random weights, the real loaders' placement
    code: quantization, offload, tiling), then one turn that reads a picture, answers and draws
    one (forced), so the ViT, the LLM (prefill + decode), the output resampler, the UNet and the
    VAE all run; the allocator's peak beside `seedx plan`'s estimate for the same plan."""
    from PIL import Image

    from seedx_agent.memory_plan import official_shapes, plan_memory
    from seedx_agent.placement import PROFILES, Placement
    from seedx_agent.runtime import Runtime
    from seedx_agent.turn_options import TurnOptions

    config = seedx_config(dry)
    tokenizer = None if dry else ROOT / "tests" / "fixtures" / "golden_tokenizer"
    shapes = official_shapes()
    cuda = device.startswith("cuda")
    out: dict[str, Any] = dict(shapes="tiny" if dry else "official (SEED-X-17B)",
                               note=None if cuda else "no allocator peak on the CPU: the estimate "
                               "is for the full-size stack, the measurement covers the code only")
    for name in PROFILES:
        placement = Placement.profile(name, device=device)
        gpu = device if cuda else "cuda:0"  # the estimate is always the card's
        estimate = plan_memory(shapes, Placement.profile(name, device=gpu))
        free(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        build_s, runtime = timed(device, lambda: Runtime.from_config(
            config, name=f"random {name}", tokenizer_dir=tokenizer, placement=placement,
            load_plugins=False))
        resident = torch.cuda.memory_allocated(device) if cuda else None
        session = runtime.open_session()
        options = TurnOptions(force_image=True, max_new_tokens=config.num_img_tokens + 8,
                              num_inference_steps=steps, seed=0)
        turn_s, events = timed(device, lambda: list(session.turn(
            "Describe the image.", images=[Image.open(SCENE).convert("RGB")], options=options)))
        out[name] = dict(
            placement=placement.describe(), build_s=round(build_s, 2), turn_s=round(turn_s, 2),
            pictures=sum(type(e).__name__ == "ImageDone" for e in events),
            errors=[str(getattr(e, "message", e)) for e in events if type(e).__name__ == "ErrorEvent"],
            resident_bytes=resident,
            measured_peak_bytes=torch.cuda.max_memory_allocated(device) if cuda else None,
            estimated_peak_bytes=estimate.peak.get(gpu),
            estimate_fits=estimate.fits)
        if cuda:
            out[name]["measured_over_estimate"] = (out[name]["measured_peak_bytes"]
                                                   / out[name]["estimated_peak_bytes"])
        session = runtime = events = None
        free(device)
    return out


# --- the run --------------------------------------------------------------------------------------
def environment(device: str) -> dict:
    info: dict[str, Any] = dict(python=platform.python_version(), torch=torch.__version__,
                                machine=platform.machine(), device=device)
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        info.update(name=props.name, capability=f"{props.major}.{props.minor}",
                    total_memory_bytes=props.total_memory, cuda=torch.version.cuda)
    for package in ("transformers", "diffusers", "bitsandbytes", "torchao", "accelerate"):
        with contextlib.suppress(Exception):
            info[package] = __import__(package).__version__
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="CPU, small sizes: proves the code, not the numbers")
    p.add_argument("--device", default="cuda:0", help="the CUDA device to check (ignored with --dry)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_check.json")
    p.add_argument("--greedy-tokens", type=int, default=24)
    p.add_argument("--decode-tokens", type=int, default=None, help="default 64 (8 with --dry)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default 30; 2 with --dry)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 2; 1 with --dry)")
    a = p.parse_args(argv)
    device = "cpu" if a.dry else a.device
    if not a.dry and not torch.cuda.is_available():
        print("no CUDA device: run on a GPU machine, or pass --dry for the CPU rehearsal", file=sys.stderr)
        return 2
    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    report: dict[str, Any] = dict(dry=a.dry, environment=environment(device), sections={})
    started = time.perf_counter()
    runners: dict[str, Callable[[], dict]] = dict(
        greedy=lambda: section_greedy(device, a.dry, a.greedy_tokens),
        bandwidth=lambda: section_bandwidth(device, a.dry),
        decode=lambda: section_decode(device, a.dry, report["sections"].get("bandwidth"),
                                      a.decode_tokens or (8 if a.dry else 64)),
        detokenizer=lambda: section_detokenizer(device, a.dry, a.steps or (2 if a.dry else 30),
                                                a.reps or (1 if a.dry else 2)),
        profiles=lambda: section_profiles(device, a.dry, a.steps or (2 if a.dry else 4)),
    )
    failed = []
    for name in SECTIONS:
        if name not in wanted:
            continue
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            result = runners[name]()
        except Exception as exc:  # one broken section must not hide the others' numbers
            result = dict(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            failed.append(name)
        result["seconds"] = round(time.perf_counter() - t0, 2)
        report["sections"][name] = result
        print(f"[gpu_check] {name}: {result['seconds']} s{' FAILED' if name in failed else ''}",
              file=sys.stderr, flush=True)
    report["seconds"] = round(time.perf_counter() - started, 2)
    report["failed"] = failed
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(a.out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=str))
    tmp.replace(a.out)
    print(f"[gpu_check] wrote {a.out} in {report['seconds']} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
