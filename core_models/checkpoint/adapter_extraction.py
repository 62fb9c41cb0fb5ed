"""A released variant LLM rewritten as a peft adapter on the base LLM: three 26 GB models become
one base plus two adapters of a few hundred MB each.

SEED-X-I and SEED-X-Edit were LoRA-tuned from the pre-trained SEED-X (r = 32 on every attention
and MLP projection; norms and embeddings fully trainable, reference §5.8) and then merged, so
``variant - base`` is low rank on the linear layers and sparse or small elsewhere. Extraction reads
both checkpoints tensor by tensor (never two models in memory) and picks, per tensor, the
cheapest exact-enough form peft can load back:

* identical within float noise: nothing;
* a linear weight whose difference is low rank: LoRA factors, the rank per tensor being the
  smallest whose relative residual ``||D - D_r||_F / ||D||_F`` is at most ``tol``;
* ``embed_tokens`` / ``lm_head`` with only some rows changed: peft trainable tokens (the new
  rows), or LoRA when cheaper;
* anything else that differs (norms, a full-rank linear): the whole module (``modules_to_save``).

The resamplers and ``patch_pos_embed`` tensors that differ go to ``agent.safetensors`` beside the
adapter, which `seedx_agent.adapters.AdapterHost` swaps in with the adapter.

The written folder is then checked without two LLMs in memory: a layer-streamed forward of a
fixed prompt through base + adapter (as read back from the written files) and through the merged
variant, each path on its own hidden states (`adapter_check`).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, write_json
from .adapter_check import (ADAPTER_WEIGHTS, LOGITS_RTOL, PEFT_PREFIX,
                            AdapterMergedView, compare_streamed_logits, fixed_prompt, llm_config,
                            logits_agreement)
from .keys import is_ignored_key
from .layout import SeedXPaths
from .reading import (CheckpointError, CheckpointMismatchError, CheckpointView, PathLike,
                      tensor_dtype, tensor_shape)

logger = logging.getLogger(__name__)

DEFAULT_TOL = 1e-2
DEFAULT_MAX_RANK = 64
# Below this relative size a difference is float noise (fp32 rounding is ~6e-8 per element, so a
# re-saved identical tensor stays far below it; a real fine-tune delta is 1e-3 or more).
SAME_RTOL = 1e-6
# LoRA or trainable tokens only when they cost at most this fraction of the dense module.
MAX_COST_FRACTION = 0.5
AGENT_WEIGHTS = "agent.safetensors"
REPORT_NAME = "extraction_report.json"
ROW_MODULES = ("model.embed_tokens", "lm_head")


class ExtractionCheckFailed(CheckpointError):
    """The adapter's logits do not reproduce the merged variant's within the tolerance."""


@dataclass
class TensorDecision:
    """How one tensor of the variant is carried by the adapter."""

    key: str
    module: str
    kind: str               # "same", "lora", "tokens" or "dense"
    shape: tuple[int, ...]
    rank: int | None = None          # lora
    rows: int | None = None          # tokens: how many rows changed
    residual: float = 0.0            # ||D - stored||_F / ||D||_F (0 when exact)
    relative_change: float = 0.0     # ||D||_F / ||W_base||_F
    reason: str = ""                 # why a module is kept whole although it need not be


@dataclass
class ExtractionReport:
    """What `extract_adapter` decided and wrote for one variant (``extraction_report.json``)."""

    variant: str
    base: str
    tol: float
    max_rank: int
    tensors: list[TensorDecision] = field(default_factory=list)
    agent_tensors: list[str] = field(default_factory=list)
    adapter_bytes: int = 0
    variant_bytes: int = 0
    logits: dict[str, Any] | None = None
    folder: str | None = None

    def of_kind(self, kind: str) -> list[TensorDecision]:
        return [t for t in self.tensors if t.kind == kind]

    @property
    def ranks(self) -> dict[str, int]:
        return {t.module: t.rank for t in self.of_kind("lora")}

    @property
    def dense_modules(self) -> list[str]:
        return sorted(t.module for t in self.of_kind("dense"))

    @property
    def max_residual(self) -> float:
        return max((t.residual for t in self.tensors), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["totals"] = {
            **{kind: len(self.of_kind(kind)) for kind in ("same", "lora", "tokens", "dense")},
            "rank_histogram": dict(sorted(Counter(self.ranks.values()).items())),
            "max_residual": self.max_residual,
            "adapter_mb": self.adapter_bytes / 1e6, "variant_mb": self.variant_bytes / 1e6,
            "agent_tensors": len(self.agent_tensors)}
        return data


# ------------------------------------------------------------------------------------------------
# The per-tensor rule
# ------------------------------------------------------------------------------------------------
def _fro(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t, dtype=torch.float64))


def low_rank_factors(delta: torch.Tensor, tol: float = DEFAULT_TOL,
                     max_rank: int = DEFAULT_MAX_RANK) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """``(B, A, residual)`` with ``B @ A ~ delta`` at the smallest rank whose relative Frobenius
    residual is <= ``tol``, or None when no rank <= ``max_rank`` reaches it.

    The rank is chosen from the singular values: the residual of the best rank-r approximation
    is ``sqrt(||D||^2 - sum_{i<=r} sigma_i^2)``, exactly also for the randomized SVD (its factors
    are an exact SVD of the projection onto the sampled range, so the sigmas can only be
    conservative). Big matrices use ``torch.svd_lowrank`` with ``max_rank + 10`` samples and two
    power iterations: seconds for 5120 x 13824, where a full SVD takes minutes. The returned
    residual is measured directly on the factors. The singular values are split as sqrt(S) on
    each side so B and A have the same scale (better conditioned in half precision).
    """
    d = delta.float()
    m, n = d.shape
    total = _fro(d) ** 2
    if total == 0.0:
        return None
    limit = min(max_rank, m, n)
    q = min(limit + 10, m, n)
    if min(m, n) <= 4 * q:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        v = vh.mH
    else:
        u, s, v = torch.svd_lowrank(d, q=q, niter=2)
    kept = torch.cumsum(s.double() ** 2, 0)[:limit]
    residuals = torch.sqrt(torch.clamp(total - kept, min=0.0) / total)
    hits = torch.nonzero(residuals <= tol)
    if hits.numel() == 0:
        return None
    r = int(hits[0]) + 1
    root = torch.sqrt(s[:r])
    b = (u[:, :r] * root).contiguous()
    a = (root[:, None] * v[:, :r].mH).contiguous()
    residual = _fro(d - b @ a) / math.sqrt(total)
    return b, a, residual


def _changed_rows(delta: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    row_delta = torch.linalg.vector_norm(delta.float(), dim=1)
    row_base = torch.linalg.vector_norm(base.float(), dim=1)
    floor = SAME_RTOL * float(row_base.mean()) + 1e-30
    return torch.nonzero(row_delta > torch.clamp(SAME_RTOL * row_base, min=floor)).flatten()


def decide(key: str, module: str, module_type: str, base: torch.Tensor, variant: torch.Tensor, *,
           tol: float = DEFAULT_TOL, max_rank: int = DEFAULT_MAX_RANK
           ) -> tuple[TensorDecision, dict[str, torch.Tensor]]:
    """The form of one tensor in the adapter and its payload (``{}`` for same / dense; dense
    modules are copied whole from the variant when written).

    ``module_type`` is ``"linear"``, ``"embedding"`` or anything else (norms): only linear weights
    and the embedding can be LoRA, only ``embed_tokens`` / ``lm_head`` can be trainable tokens.
    """
    shape = tuple(variant.shape)
    if tuple(base.shape) != shape:
        raise CheckpointError(f"{key}: base shape {list(base.shape)} vs variant shape "
                              f"{list(shape)}: a variant of another architecture cannot be an "
                              f"adapter of this base")
    delta = variant.float() - base.float()
    norm_base = _fro(base)
    norm_delta = _fro(delta)
    change = norm_delta / norm_base if norm_base else (0.0 if norm_delta == 0 else math.inf)
    record = TensorDecision(key=key, module=module, kind="same", shape=shape,
                            relative_change=change)
    if norm_delta <= SAME_RTOL * norm_base or norm_delta == 0.0:
        return record, {}
    record.kind = "dense"
    if not key.endswith(".weight") or delta.ndim != 2 or module_type not in ("linear", "embedding"):
        return record, {}
    m, n = shape
    dense_cost = m * n
    options: list[tuple[int, str, dict[str, torch.Tensor], float, int | None]] = []
    if module in ROW_MODULES:
        rows = _changed_rows(delta, base)
        if len(rows) < m:
            unchanged = torch.ones(m, dtype=torch.bool)
            unchanged[rows] = False
            residual = _fro(delta[unchanged]) / norm_delta
            options.append((len(rows) * n, "tokens",
                            {"indices": rows, "rows": variant[rows].clone()}, residual, len(rows)))
    # peft keeps an embedding's LoRA as (B @ A).T, so factor the transpose
    factored = low_rank_factors(delta.mT if module_type == "embedding" else delta, tol, max_rank)
    if factored is not None:
        b, a, residual = factored
        options.append((b.shape[1] * (m + n), "lora", {"A": a, "B": b}, residual, b.shape[1]))
    options = [o for o in options if o[0] <= MAX_COST_FRACTION * dense_cost]
    if not options:
        return record, {}
    _, kind, payload, residual, count = min(options, key=lambda o: o[0])
    record.kind, record.residual = kind, residual
    if kind == "lora":
        record.rank = count
    else:
        record.rows = count
    return record, payload


# ------------------------------------------------------------------------------------------------
# The peft folder
# ------------------------------------------------------------------------------------------------
def module_types(llm_dir: PathLike) -> dict[str, str]:
    """``{module name: "linear" | "embedding" | class name}`` of the HF Llama in ``llm_dir``,
    from a model built on the meta device (no memory, no weights read)."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(llm_config(Path(llm_dir)))
    types = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            types[name] = "linear"
        elif isinstance(module, torch.nn.Embedding):
            types[name] = "embedding"
        else:
            types[name] = type(module).__name__
    return types


def peft_tensors(decisions: list[TensorDecision], payloads: Mapping[str, dict[str, torch.Tensor]],
                 variant: Mapping[str, torch.Tensor], module_type: Mapping[str, str]
                 ) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the keys ``PeftModel.save_pretrained`` writes:
    ``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (Linear),
    ``lora_embedding_A`` / ``lora_embedding_B`` (Embedding, delta = (B @ A).T),
    ``<module>.token_adapter.trainable_tokens_delta`` (the new rows, despite the name) and
    ``<module>.<param>`` for a module kept whole (``modules_to_save``)."""
    out: dict[str, torch.Tensor] = {}
    for record in decisions:
        payload = payloads.get(record.key, {})
        prefix = PEFT_PREFIX + record.module
        if record.kind == "lora" and module_type[record.module] == "embedding":
            out[f"{prefix}.lora_embedding_A"] = payload["A"]
            out[f"{prefix}.lora_embedding_B"] = payload["B"]
        elif record.kind == "lora":
            out[f"{prefix}.lora_A.weight"] = payload["A"]
            out[f"{prefix}.lora_B.weight"] = payload["B"]
        elif record.kind == "tokens":
            out[f"{prefix}.token_adapter.trainable_tokens_delta"] = payload["rows"]
    dense = {t.module for t in decisions if t.kind == "dense"}
    for key in variant:
        module = key.rsplit(".", 1)[0]
        if module in dense:
            out[PEFT_PREFIX + key] = variant[key]
    return out


def lora_config(decisions: list[TensorDecision], payloads: Mapping[str, dict[str, torch.Tensor]]):
    """The peft ``LoraConfig``: exact module names as targets, the most common rank as ``r`` and
    the others in ``rank_pattern``, ``alpha = r`` everywhere (scaling 1: the factors are the
    difference itself), the whole modules in ``modules_to_save``, the changed rows in
    ``trainable_token_indices``."""
    from peft import LoraConfig

    ranks = {t.module: t.rank for t in decisions if t.kind == "lora"}
    r = Counter(ranks.values()).most_common(1)[0][0] if ranks else 8
    pattern = {module: rank for module, rank in ranks.items() if rank != r}
    dense = sorted({t.module for t in decisions if t.kind == "dense"})
    tokens = {t.module: payloads[t.key]["indices"].tolist() for t in decisions if t.kind == "tokens"}
    return LoraConfig(r=r, lora_alpha=r, target_modules=sorted(ranks), rank_pattern=pattern,
                      alpha_pattern=dict(pattern), lora_dropout=0.0, bias="none",
                      modules_to_save=dense or None, trainable_token_indices=tokens or None,
                      task_type="CAUSAL_LM", inference_mode=True, init_lora_weights=True)


# ------------------------------------------------------------------------------------------------
# One variant, then a release tree
# ------------------------------------------------------------------------------------------------
def _view(path: Path) -> CheckpointView:
    return CheckpointView(path)


def _stored_bytes(view: Mapping[str, torch.Tensor], keys) -> int:
    return sum(math.prod(tensor_shape(view, k)) * tensor_dtype(view, k).itemsize for k in keys)


def _agent_differences(base_agent: Path | None, variant_agent: Path | None
                       ) -> tuple[dict[str, torch.Tensor], int]:
    """The variant's agent tensors that differ from the base's (and the variant agent's bytes)."""
    if base_agent is None or variant_agent is None:
        return {}, 0
    base, variant = _view(base_agent), _view(variant_agent)
    keys = [k for k in variant if not is_ignored_key(k)]
    base_keys = set(base)  # (``in`` on a lazy view would read the tensor)
    extra = set(keys) - base_keys  # a tensor only the base has keeps the base's value
    mismatched = [(k, tensor_shape(variant, k), tensor_shape(base, k)) for k in keys
                  if k in base_keys and tensor_shape(variant, k) != tensor_shape(base, k)]
    if extra or mismatched:
        raise CheckpointMismatchError(f"agent {variant_agent} vs base {base_agent}",
                                      missing=(), unexpected=extra, mismatched=mismatched)
    changed = {}
    for key in keys:
        a, b = variant[key], base[key]
        if _fro(a.float() - b.float()) > SAME_RTOL * _fro(b):
            changed[key] = a.clone()
    return changed, _stored_bytes(variant, keys)


@dataclass
class PlannedAdapter:
    """One variant's decisions and small payloads, before anything is written."""

    report: ExtractionReport
    payloads: dict[str, dict[str, torch.Tensor]]
    agent_changes: dict[str, torch.Tensor]
    module_types: dict[str, str]
    base_llm: Path
    variant_llm: Path
    itemsize: dict[str, tuple[int, int]]  # key -> (stored factor, variant) bytes per element

    def demote(self, module: str, reason: str) -> None:
        """Keep ``module`` whole in this adapter (see `harmonize`)."""
        for record in self.report.tensors:
            if record.module == module and record.kind in ("lora", "tokens"):
                record.kind, record.rank, record.rows, record.residual = "dense", None, None, 0.0
                record.reason = reason
                self.payloads.pop(record.key, None)
        self._size()

    def _size(self) -> None:
        total = sum(t.numel() * t.element_size() for t in self.agent_changes.values())
        for t in self.report.tensors:
            factor, whole = self.itemsize[t.key]
            if t.kind == "lora":
                total += t.rank * sum(t.shape) * factor
            elif t.kind == "tokens":
                total += t.rows * t.shape[1] * factor
            elif t.kind == "dense":
                total += math.prod(t.shape) * whole
        self.report.adapter_bytes = total


def plan_adapter(base_llm: PathLike, variant_llm: PathLike, *, variant: str, base: str,
                 base_agent: PathLike | None = None, variant_agent: PathLike | None = None,
                 tol: float = DEFAULT_TOL, max_rank: int = DEFAULT_MAX_RANK,
                 dtype: torch.dtype | None = None, progress: bool | None = None) -> PlannedAdapter:
    """Decide the form of every tensor of ``variant_llm`` against ``base_llm``, streaming: one
    base / variant tensor pair is in memory at a time, plus the small factors kept so far.
    ``dtype`` casts the stored factors (default: the variant's own dtype)."""
    from tqdm.auto import tqdm

    base_llm, variant_llm = Path(base_llm), Path(variant_llm)
    base_view, variant_view = _view(base_llm), _view(variant_llm)
    keys = [k for k in variant_view if not is_ignored_key(k)]
    base_keys = {k for k in base_view if not is_ignored_key(k)}
    mismatched = [(k, tensor_shape(variant_view, k), tensor_shape(base_view, k)) for k in keys
                  if k in base_keys and tensor_shape(variant_view, k) != tensor_shape(base_view, k)]
    if set(keys) != base_keys or mismatched:
        raise CheckpointMismatchError(
            f"variant {variant} ({variant_llm}) vs base {base} ({base_llm})",
            missing=base_keys - set(keys), unexpected=set(keys) - base_keys, mismatched=mismatched,
            note="an adapter can only carry a variant with the base's exact tensors and shapes")
    types = module_types(variant_llm)
    report = ExtractionReport(variant=variant, base=base, tol=tol, max_rank=max_rank)
    payloads: dict[str, dict[str, torch.Tensor]] = {}
    itemsize = {}
    bar = tqdm(keys, desc=f"extracting {variant}", unit="tensor", leave=False,
               disable=progress is False if progress is not None else None)
    for key in bar:
        module = key.rsplit(".", 1)[0]
        record, payload = decide(key, module, types.get(module, "?"), base_view[key],
                                 variant_view[key], tol=tol, max_rank=max_rank)
        report.tensors.append(record)
        stored = dtype or tensor_dtype(variant_view, key)
        itemsize[key] = (stored.itemsize, tensor_dtype(variant_view, key).itemsize)
        if payload:
            payloads[key] = {k: v if k == "indices" else v.to(stored) for k, v in payload.items()}
        if record.kind == "lora":
            bar.set_postfix_str(f"{module} r={record.rank} res={record.residual:.1e}")
    bar.close()
    agent_changes, agent_bytes = _agent_differences(
        Path(base_agent) if base_agent else None, Path(variant_agent) if variant_agent else None)
    report.agent_tensors = sorted(agent_changes)
    report.variant_bytes = _stored_bytes(variant_view, keys) + agent_bytes
    plan = PlannedAdapter(report, payloads, agent_changes, types, base_llm, variant_llm, itemsize)
    plan._size()
    return plan


def harmonize(plans: list[PlannedAdapter]) -> None:
    """Give each module one form across all adapters of a base.

    peft hosts several adapters on one model, but not in different forms on one module: a
    module kept whole (``modules_to_save``) by one adapter cannot take another adapter's LoRA,
    nor LoRA and trainable tokens mix. So a module changed in different forms by different
    variants is kept whole in every variant that changes it (costs the memory of a copy, never
    accuracy).
    """
    forms: dict[str, dict[str, str]] = {}
    for plan in plans:
        for t in plan.report.tensors:
            if t.kind != "same":
                forms.setdefault(t.module, {})[plan.report.variant] = t.kind
    for module, by_variant in forms.items():
        if len(set(by_variant.values())) > 1:
            whole = sorted(v for v, kind in by_variant.items() if kind == "dense")
            reason = (f"kept whole to match {', '.join(whole) or 'the other adapters'} (peft "
                      f"cannot mix forms of one module across adapters)")
            for plan in plans:
                if plan.report.variant in by_variant:
                    plan.demote(module, reason)


def write_adapter(plan: PlannedAdapter, out_dir: PathLike, *, check: bool = True,
                  logits_rtol: float = LOGITS_RTOL, progress: bool | None = None) -> ExtractionReport:
    """Write ``plan`` as the peft folder ``out_dir``. The folder appears whole or not at all
    (written beside, then renamed over any old one); with ``check`` the logits of the written
    adapter are compared with the variant's before that, and a failed check raises
    `ExtractionCheckFailed` leaving no folder."""
    report = plan.report
    if not report.of_kind("lora"):
        what = ("is identical to the base" if all(t.kind == "same" for t in report.tensors)
                else "has no low-rank linear difference, and a peft LoRA adapter needs one")
        raise CheckpointError(f"{report.variant} {what}: no adapter written (keep it dense)")
    base_view, variant_view = _view(plan.base_llm), _view(plan.variant_llm)
    tensors = peft_tensors(report.tensors, plan.payloads, _DenseModules(variant_view, report),
                           plan.module_types)
    config = lora_config(report.tensors, plan.payloads)
    out_dir = Path(out_dir)
    with atomic_write(out_dir.with_name(out_dir.name + ".new"), directory=True) as tmp:
        _write_folder(tmp, tensors, plan.agent_changes, config)
        del tensors
        if check:
            ids = fixed_prompt(llm_config(plan.variant_llm).vocab_size)
            merged = AdapterMergedView(base_view, tmp)
            logits = compare_streamed_logits(plan.variant_llm, {
                "adapter": merged.__getitem__, "variant": variant_view.__getitem__}, ids,
                progress=progress)
            report.logits = logits_agreement(logits["adapter"], logits["variant"], logits_rtol)
        report.folder = str(out_dir)
        write_json(tmp / REPORT_NAME, report.to_dict())
        if report.logits is not None and not report.logits["ok"]:
            raise ExtractionCheckFailed(
                f"adapter of {report.variant} on {report.base} does not reproduce the variant's "
                f"logits: max abs difference {report.logits['max_abs']:.3g} (relative "
                f"{report.logits['max_rel']:.3g}, allowed {logits_rtol}), "
                f"{report.logits['clear_top1_flips']} clear top-1 flips; lower --tol or raise "
                f"--max-rank (nothing was written)")
    _replace_folder(out_dir.with_name(out_dir.name + ".new"), out_dir)
    return report


def extract_adapter(base_llm: PathLike, variant_llm: PathLike, out_dir: PathLike | None, *,
                    variant: str, base: str, base_agent: PathLike | None = None,
                    variant_agent: PathLike | None = None, tol: float = DEFAULT_TOL,
                    max_rank: int = DEFAULT_MAX_RANK, dtype: torch.dtype | None = None,
                    check: bool = True, logits_rtol: float = LOGITS_RTOL,
                    progress: bool | None = None) -> ExtractionReport:
    """One variant LLM as a peft adapter folder ``out_dir`` on ``base_llm`` (`plan_adapter`,
    then `write_adapter`); ``out_dir=None`` is a dry run (the report, nothing written)."""
    plan = plan_adapter(base_llm, variant_llm, variant=variant, base=base, base_agent=base_agent,
                        variant_agent=variant_agent, tol=tol, max_rank=max_rank, dtype=dtype,
                        progress=progress)
    if out_dir is None:
        return plan.report
    return write_adapter(plan, out_dir, check=check, logits_rtol=logits_rtol, progress=progress)


class _DenseModules(Mapping):
    """The variant tensors of modules kept whole, read only when written."""

    def __init__(self, variant: Mapping[str, torch.Tensor], report: ExtractionReport):
        dense = {t.module for t in report.tensors if t.kind == "dense"}
        self._variant = variant
        self._keys = [t.key for t in report.tensors if t.module in dense]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._variant[key]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _write_folder(folder: Path, tensors: dict[str, torch.Tensor],
                  agent: dict[str, torch.Tensor], config: Any) -> None:
    from safetensors.torch import save_file

    owned = {k: v.detach().contiguous().clone() if v.untyped_storage().nbytes() != v.nbytes
             else v.detach().contiguous() for k, v in tensors.items()}
    with atomic_write(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(owned, str(tmp), metadata={"format": "pt"})
    if agent:
        with atomic_write(folder / AGENT_WEIGHTS) as tmp:
            save_file({k: v.contiguous() for k, v in agent.items()}, str(tmp),
                      metadata={"format": "pt"})
    config.save_pretrained(str(folder))


def _replace_folder(new: Path, old: Path) -> None:
    """``new`` renamed to ``old``; an existing ``old`` is moved aside first and removed after."""
    aside = old.with_name(old.name + ".old")
    if aside.exists():
        shutil.rmtree(aside)
    if old.exists():
        old.rename(aside)
    new.rename(old)
    if aside.exists():
        shutil.rmtree(aside)


def extract_adapters(root: PathLike, *, base: str = "seed_x",
                     variants: tuple[str, ...] = ("seed_x_i", "seed_x_edit"),
                     tol: float = DEFAULT_TOL, max_rank: int = DEFAULT_MAX_RANK,
                     dtype: torch.dtype | None = None, dry_run: bool = False, check: bool = True,
                     logits_rtol: float = LOGITS_RTOL,
                     progress: bool | None = None) -> list[ExtractionReport]:
    """Every variant of the release tree at ``root`` as ``root/adapters/<variant>/`` on ``base``.

    Components are found as `SeedXPaths` finds them (monolithic or split-repo layout); a missing
    base or variant LLM is one `CheckpointError` saying where it was looked for.
    """
    from .layout import VARIANTS

    root = Path(root)
    unknown = [v for v in (base, *variants) if v not in VARIANTS]
    if unknown:
        raise CheckpointError(f"unknown variant(s) {unknown}; the release has {list(VARIANTS)}")
    if base in variants:
        raise CheckpointError(f"{base} is the base: it cannot also be one of its adapters")
    base_paths = SeedXPaths.resolve(root, base).require("llm")
    variant_paths = [SeedXPaths.resolve(root, name).require("llm") for name in variants]
    plans = [plan_adapter(base_paths.llm, paths.llm, variant=name, base=base,
                          base_agent=base_paths.agent, variant_agent=paths.agent, tol=tol,
                          max_rank=max_rank, dtype=dtype, progress=progress)
             for name, paths in zip(variants, variant_paths)]
    harmonize(plans)
    if dry_run:
        return [plan.report for plan in plans]
    return [write_adapter(plan, root / "adapters" / plan.report.variant, check=check,
                          logits_rtol=logits_rtol, progress=progress) for plan in plans]
