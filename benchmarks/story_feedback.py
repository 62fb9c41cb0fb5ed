"""Story feedback: re-encode each drawn picture (pixels) or feed back its generated features?

SEED-Story keeps a story going by feeding the *generated* image features of one step back as the
next step's image (a window of up to 8 images), instead of drawing a picture and re-encoding its
pixels with the ViT. The product (``seedx_agent.steps``) re-encodes pixels. This script measures
both on SEED-X Nano's ``story`` adapter, on held-out first scenes, for 3 steps:

* PIXELS: ``session.ask("Continue the story.", [first_scene], variant="story", steps=3)`` as
  shipped: step k's picture is de-tokenized and re-encoded by the ViT for step k+1.
* FEATURES: the same call, but when a picture the model drew comes back as an input, its image
  embedding is built from the features the output resampler regressed for it (the ``<img>`` run's
  ``GenerationResult.img_gen_feat``, what ``Runtime.render`` receives) instead of the ViT
  on its pixels. In Nano the ViT gives 64 x 128 tokens per view, while the output resampler
  regresses 16 x 128 targets (``vit_down``: the mean of 1x4 strips of the flattened 8x8 token
  grid, ``ContinuousLVLM.forward``). The fed-back features are therefore brought back to 64
  tokens by repeating each target 4 times (the exact inverse layout of the strip pooling), and
  given to every any-res view with the view positions the pixel path would use. A variant
  ``features16`` also feeds the 16 targets unchanged (the input resampler takes any square token
  count). It is done by wrapping the runtime's ``render`` (to record each picture's features by
  its content hash) and ``encode_image`` (to answer with those features), inside this script.
  The story template is single-turn, so the window only ever holds the previous picture; the
  wrapper would serve up to the last 8 drawn pictures the same way.

Metric per step: object consistency, i.e. every object (colour + shape) of the first scene is
still found by the Nano analyser (``plugins.seedx_nano.analyser.analyse``) in that step's
picture (a story moves objects, so places are not compared), and the mean fraction of the first
scene's objects kept. Mean +- standard error over n held-out first scenes of the ``story`` suite
(``suites.eval_example("story", k)``, seed ``suites.suite_seed("story", k)``, also the turn's
de-tokenizer seed), the same scenes and seeds for every way. Render settings: the manifest's
defaults (10 denoising steps, guidance 1.5).

Run: ``python benchmarks/story_feedback.py --n 20 --out /tmp/story_feedback.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WAYS = ("pixels", "features", "features16")
STEPS = 3
WINDOW = 8


def consistency(scene, image) -> tuple[bool, float]:
    """(all first-scene objects found, fraction found): colour+shape multiset matching."""
    from plugins.seedx_nano.analyser import analyse

    if image is None:
        return False, 0.0
    found = Counter((d.colour, d.shape) for d in analyse(image, tolerant=True))
    want = Counter((o.colour, o.shape) for o in scene.objects)
    kept = sum(min(c, found[k]) for k, c in want.items())
    total = sum(want.values())
    return kept == total, kept / total


class FeatureFeedback:
    """Wraps ``runtime.render`` / ``runtime.encode_image`` so a drawn picture, given back as an
    input, is embedded from its generated features rather than from the ViT on its pixels."""

    def __init__(self, runtime, mode: str):
        from core_models.image_io import content_hash

        self.rt, self.mode, self.hash = runtime, mode, content_hash
        self.features: dict[str, torch.Tensor] = {}   # picture hash -> (Q, vit_dim), last WINDOW
        self.fed = 0
        self.gaps: list[dict] = []   # generated features vs the ViT's pooled tokens of the picture
        self._render, self._encode = runtime.render, runtime.encode_image
        runtime.render = self.render
        runtime.encode_image = self.encode_image

    def close(self) -> None:
        del self.rt.render, self.rt.encode_image   # back to the class methods

    def render(self, features, **kwargs):
        image = self._render(features, **kwargs)
        self.features[self.hash(image)] = features.detach().clone()
        while len(self.features) > WINDOW:
            self.features.pop(next(iter(self.features)))
        return image

    def encode_image(self, image, image_id, grids):
        from core_models.any_res import process_anyres_image
        from seedx_agent.runtime import EncodedImage

        feats = self.features.get(self.hash(image))
        if feats is None:   # the user's first scene: the ViT, as always
            return self._encode(image, image_id, grids)
        views = process_anyres_image(image, list(grids), self.rt.config.base_resolution)
        vit_param = next(self.rt.stack.vit.parameters())
        f = feats.to(device=vit_param.device, dtype=vit_param.dtype)
        if self.mode == "features":   # undo the 1x4 strip pooling's layout: 16 -> 64 tokens
            f = f.repeat_interleave(4, dim=0)
        self.fed += 1
        vit = self._encode(image, image_id, grids).features[-1].float()      # global view
        target = torch.nn.functional.avg_pool1d(vit.T.unsqueeze(0), 4, 4)[0].T  # (16, D)
        g = feats.float().to(target.device)
        self.gaps.append({"mse": float(((g - target) ** 2).mean()),
                          "target_var": float(target.var()),
                          "cos": float(torch.nn.functional.cosine_similarity(g, target, -1).mean())})
        return EncodedImage(features=f.unsqueeze(0).expand(views.num_views, -1, -1).contiguous(),
                            patch_positions=views.patch_positions, grid=tuple(views.grid),
                            num_views=views.num_views)


def tell(runtime, ex, seed: int):
    """One 3-step story through the product path; the pictures and texts of the steps."""
    from seedx_agent import ImagePart, TextPart

    session = runtime.open_session(variant="story")
    pictures, texts = [], []
    for event in session.turn(ex.instruction, list(ex.images), variant="story",
                              max_new_tokens=64, seed=seed, steps=STEPS):
        if type(event).__name__ == "TurnDone":
            made = [p for p in event.parts if isinstance(p, ImagePart) and p.role != "input"]
            pictures.append(session.get_image(made[-1].image_id) if made else None)
            texts.append("".join(p.text for p in event.parts if isinstance(p, TextPart)))
    pictures += [None] * (STEPS - len(pictures))
    texts += [""] * (STEPS - len(texts))
    return pictures, texts


def mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument("--out", default="/tmp/story_feedback.json")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import seedx_agent
    from plugins.seedx_nano import suites

    ways = [w for w in args.ways.split(",") if w]
    t0 = time.time()
    runtime = seedx_agent.from_pretrained("nano")
    print(f"loaded in {time.time() - t0:.1f}s; render defaults {runtime.render_defaults}",
          flush=True)
    rows: dict[str, list[dict]] = {w: [] for w in ways}
    fed: dict[str, int] = {}
    gaps: dict[str, dict] = {}
    for way in ways:
        hook = FeatureFeedback(runtime, way) if way != "pixels" else None
        for k in range(args.n):
            ex = suites.eval_example("story", k)
            seed = suites.suite_seed("story", k)
            scene = ex.meta["scene"]
            t = time.time()
            pictures, texts = tell(runtime, ex, seed)
            row = {"k": k, "seed": seed, "objects": len(scene.objects), "texts": texts,
                   "all_kept": [], "frac_kept": [], "drawn": [p is not None for p in pictures],
                   "hashes": [None if p is None else hook_hash(p) for p in pictures]}
            for p in pictures:
                ok, frac = consistency(scene, p)
                row["all_kept"].append(float(ok))
                row["frac_kept"].append(frac)
            rows[way].append(row)
            print(f"{way:10s} k={k:3d} all={row['all_kept']} frac="
                  f"{[round(f, 2) for f in row['frac_kept']]} {time.time() - t:.1f}s "
                  f"{texts[0]!r}", flush=True)
        if hook is not None:
            fed[way] = hook.fed
            gaps[way] = {k: sum(g[k] for g in hook.gaps) / max(1, len(hook.gaps))
                         for k in ("mse", "target_var", "cos")}
            hook.close()

    summary: dict[str, dict] = {}
    print(f"\nobject consistency over n={args.n} held-out story scenes "
          f"(mean +- s.e.; all = every first-scene object found, frac = fraction found)")
    print(f"{'way':10s} " + " ".join(f"{'step ' + str(s + 1) + ' all':>16s} {'frac':>13s}"
                                     for s in range(STEPS)))
    for way in ways:
        summary[way] = {}
        cells = []
        for s in range(STEPS):
            a = mean_se([r["all_kept"][s] for r in rows[way]])
            f = mean_se([r["frac_kept"][s] for r in rows[way]])
            summary[way][f"step{s + 1}"] = {"all_kept": a[0], "all_kept_se": a[1],
                                            "frac_kept": f[0], "frac_kept_se": f[1]}
            cells.append(f"{a[0]:8.3f}+-{a[1]:.3f}  {f[0]:6.3f}+-{f[1]:.3f}")
        print(f"{way:10s} " + " ".join(cells))
    if "pixels" in rows:   # step 1 reads the same first scene every way: it must agree
        for way in ways:
            same = sum(r["hashes"][0] == p["hashes"][0] for r, p in zip(rows[way], rows["pixels"]))
            print(f"step-1 pictures identical to pixels' ({way}): {same}/{args.n}")
            summary[way]["step1_identical_to_pixels"] = same
    print(f"feature feedbacks used: {fed}")
    print(f"generated features vs the ViT's 1x4-pooled tokens of the same picture: {gaps}")
    out = {"n": args.n, "steps": STEPS, "render_defaults": dict(runtime.render_defaults),
           "seeds": [suites.suite_seed("story", 0), suites.suite_seed("story", args.n - 1)],
           "summary": summary, "feature_feedbacks": fed, "feature_gaps": gaps, "rows": rows,
           "seconds": round(time.time() - t0, 1)}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


def hook_hash(image) -> str:
    from core_models.image_io import content_hash
    return content_hash(image)


if __name__ == "__main__":
    raise SystemExit(main())
