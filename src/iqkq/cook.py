"""Cook a whole GGUF model: quantize its tensors by a recipe (and an imatrix), streaming.

``quantize_model(src, dst, rules, imatrix=..., default=...)`` is ``llama-quantize`` of
ik_llama.cpp @ 8337e4cd with ``--custom-q``: the same choice of tensors, the same rules
(regex=type, first match wins), the same fallbacks for row lengths a type cannot take, the
same metadata (``general.file_type``, ``general.quantization_version``, ``quantize.imatrix.*``),
and bytes equal to ``iqkq.quantize`` of each tensor (which are ik_llama.cpp's bytes). The
input is memory-mapped and read tensor by tensor; tensors are quantized by iqkq's thread pool
(or on a Dask cluster, ``scheduler=``) with a bounded number in flight and written in order by
:class:`iqkq.gguf.GGUFStreamWriter` (temporary file, renamed when complete). ``docs/cook.md``
says precisely what is followed.

Example:
    >>> rules = iqkq.cook.parse_rules("ffn_down=q8_0,attn_.*=iq4_ks")      # doctest: +SKIP
    >>> iqkq.quantize_model("model-bf16.gguf", "model-iq4_ks.gguf", rules, default="iq4_ks",
    ...                     imatrix="imatrix.dat")                          # doctest: +SKIP
"""
from __future__ import annotations

import collections
import mmap as _mmap
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "CookError",
    "Rule",
    "Plan",
    "PlanEntry",
    "CookReport",
    "parse_rules",
    "load_recipe",
    "plan",
    "quantize_model",
    "change_type_if_necessary",
    "FALLBACK",
    "FTYPE",
]


class CookError(ValueError):
    """A model cannot be cooked as asked (bad rule, unknown or missing type, bad imatrix...),
    raised by the plan before any output is written; or a tensor that cannot be quantized
    (NaN / inf weights), found while cooking: then the temporary output is removed and the
    target left as it was."""


# ----------------------------------------------------------------------------- ik_llama.cpp's tables
# All by ggml type name (lower case), so types iqkq gains later are picked up without edits.
# Source: ik_llama.cpp @ 8337e4cd, src/llama-quantize.cpp, change_type_if_necessary(): types that
# need a row length (ne[0]) divisible by QK_K = 256, and the type used instead when it is not.
FALLBACK: Dict[str, str] = {
    **{t: "iq4_nl" for t in (
        "iq2_xxs", "iq2_xxs_r4", "iq2_xs", "iq2_xs_r4", "iq2_ks", "iq2_s", "iq2_s_r4", "iq3_xxs", "iq3_xxs_r4",
        "iq3_s", "iq3_s_r4", "iq1_s", "iq1_m", "q2_k", "q2_k_r4", "q3_k", "q3_k_r4", "iq2_k", "iq2_k_r4", "iq2_kl",
        "iq3_ks", "iq3_k", "iq3_k_r4", "iq4_kss", "iq4_ks", "iq4_ks_r4", "iq4_xs_r8", "iq1_kt", "iq2_kt", "iq3_kt",
        "iq4_kt", "iq4_xs")},
    **{t: "q5_0" for t in ("iq4_k", "iq4_k_r4", "q4_k_r4", "iq5_ks", "iq5_ks_r4", "q4_k")},
    **{t: "q6_0" for t in ("iq5_k", "iq5_k_r4", "q5_k_r4", "q5_k")},
    **{t: "q8_0" for t in ("iq6_k", "q6_k_r4", "q8_k_r8", "q6_k")},
}
QK_K = 256
# ternary types need ne[0] % 64 (QK_IQ1BN) and have no fallback ("Unsupported tensor size")
_BN_TYPES = frozenset({"iq1_bn", "iq2_bn", "iq2_bn_r4"})
QK_IQ1BN = 64

# interleaved_properties(): the plain type of each row-interleaved type and its row count; used
# when ne[1] is not a multiple of the row count and for token embeddings.
INTERLEAVED: Dict[str, Tuple[str, int]] = {
    "q4_0_4_4": ("q4_0", 4), "q4_0_4_8": ("q4_0", 4), "q4_0_8_8": ("q4_0", 8), "q4_0_4x4": ("q4_0", 4),
    "q4_0_4x8": ("q4_0", 4), "q4_0_8x8": ("q4_0", 8),
    "q4_0_r8": ("q4_0", 8), "q5_0_r4": ("q5_0", 4), "q6_0_r4": ("q6_0", 4), "q8_0_r8": ("q8_0", 8),
    "q2_k_r4": ("q2_k", 4), "q3_k_r4": ("q3_k", 4), "q4_k_r4": ("q4_k", 4), "q5_k_r4": ("q5_k", 4),
    "q6_k_r4": ("q6_k", 4), "iq2_xxs_r4": ("iq2_xxs", 4), "iq2_xs_r4": ("iq2_xs", 4), "iq2_s_r4": ("iq2_s", 4),
    "iq3_xxs_r4": ("iq3_xxs", 4), "iq3_s_r4": ("iq3_s", 4), "iq4_xs_r8": ("iq4_xs", 8), "iq4_nl_r4": ("iq4_nl", 4),
    "iq1_s_r4": ("iq1_s", 4), "iq1_m_r4": ("iq1_m", 4), "iq2_bn_r4": ("iq2_bn", 4), "iq2_k_r4": ("iq2_k", 4),
    "iq3_k_r4": ("iq3_k", 4), "iq4_k_r4": ("iq4_k", 4), "iq4_ks_r4": ("iq4_ks", 4), "iq5_ks_r4": ("iq5_ks", 4),
    "iq5_k_r4": ("iq5_k", 4), "mxfp4_r8": ("mxfp4", 8), "q8_kv_r8": ("q8_kv", 8), "q8_k_r8": ("q8_0", 8),
    "bf16_r16": ("bf16", 16),
}

# include/llama.h enum llama_ftype: the general.file_type llama-quantize writes for the type given
# on its command line (Q4_K / Q5_K are its aliases of Q4_K_M / Q5_K_M).
FTYPE: Dict[str, int] = {
    "f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k": 12,
    "q4_k": 15, "q5_k": 17, "q6_k": 18, "iq2_xxs": 19, "iq2_xs": 20, "iq3_xxs": 23, "iq1_s": 24, "iq4_nl": 25,
    "iq3_s": 26, "iq2_s": 28, "iq4_xs": 30, "iq1_m": 31, "bf16": 32, "mxfp4": 38, "q6_0": 135, "iq1_bn": 136,
    "iq2_bn": 137, "iq2_k": 138, "iq3_k": 139, "iq4_k": 140, "iq5_k": 141, "iq6_k": 142, "iq4_ks": 145,
    "iq2_ks": 147, "iq4_kss": 148, "q8_kv": 149, "iq5_ks": 150, "iq2_kt": 151, "iq3_kt": 152, "iq4_kt": 153,
    "iq3_ks": 154, "iq2_kl": 155, "iq1_kt": 156, "q4_0_r8": 202, "q8_0_r8": 207, "q5_0_r4": 208, "q2_k_r4": 210,
    "q3_k_r4": 211, "q4_k_r4": 214, "q5_k_r4": 216, "q6_k_r4": 218, "iq2_xxs_r4": 219, "iq2_xs_r4": 220,
    "iq3_xxs_r4": 223, "iq1_s_r4": 224, "iq4_nl_r4": 225, "iq3_s_r4": 226, "iq2_s_r4": 229, "iq4_xs_r8": 230,
    "iq1_m_r4": 231, "bf16_r16": 232, "q6_0_r4": 335, "iq2_bn_r4": 337, "iq2_k_r4": 338, "iq3_k_r4": 339,
    "iq4_k_r4": 340, "iq5_k_r4": 341, "iq4_ks_r4": 345, "iq5_ks_r4": 350, "mxfp4_r8": 351, "q8_kv_r8": 398,
    "q8_k_r8": 399,
}

# types llama-quantize refuses to produce without an imatrix (except for token_embd / output)
_VERY_LOW_BPW = frozenset({"iq2_xxs", "iq2_xxs_r4", "iq2_xs", "iq2_xs_r4", "iq2_s", "iq2_s_r4", "iq1_s", "iq1_s_r4",
                           "iq1_m", "iq1_m_r4", "iq1_kt", "iq2_kt"})

_INT_TYPES = frozenset({24, 25, 26, 27})  # i8, i16, i32, i64
_FLOAT_SOURCES = frozenset({0, 1, 30})    # f32, f16, bf16
_SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
GGML_QNT_VERSION = 2
_STR_MAX = 127  # llama_model_kv_override::val_str holds 127 bytes + NUL


def change_type_if_necessary(qtype: str, K: int) -> Tuple[str, Optional[str]]:
    """ik_llama.cpp's ``change_type_if_necessary`` by name: ``(type, reason)``; the type is the
    fallback when rows of ``K`` elements do not fit ``qtype`` (reason says why), else ``qtype``
    (reason None).

    Example:
        >>> iqkq.cook.change_type_if_necessary("iq4_ks", 320)
        ('iq4_nl', 'K=320 is not a multiple of 256')
        >>> iqkq.cook.change_type_if_necessary("q8_k_r8", 4096)
        ('q8_k_r8', None)
    """
    n = qtype.lower()
    if n in FALLBACK and K % QK_K:
        return FALLBACK[n], f"K={K} is not a multiple of {QK_K}"
    if n in _BN_TYPES and K % QK_IQ1BN:
        raise CookError(f"{qtype}: K={K} is not a multiple of {QK_IQ1BN} and ik_llama.cpp has no fallback for it "
                        f"(Unsupported tensor size)")
    return qtype, None


# ----------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Rule:
    """One ``regex=type`` rule: ``re.search(pattern, tensor_name)`` selects the type.

    Attributes: pattern (str), type (ggml type name as written, any case), where (e.g.
    ``"--custom-q rule 2"`` or ``"recipe.txt:7"``) for messages."""

    pattern: str
    type: str
    where: str = ""

    def __post_init__(self):
        try:
            object.__setattr__(self, "_re", re.compile(self.pattern))
        except re.error as e:
            raise CookError(f"{self.label}: bad regular expression {self.pattern!r}: {e}") from None
        if not self.pattern:
            raise CookError(f"{self.label}: empty regular expression")
        from ._ggml import ggml_type

        try:
            ggml_type(self.type)
        except ValueError:
            raise CookError(f"{self.label}: unknown type {self.type!r} (a ggml type name such as q8_0, iq4_ks, "
                            f"q4_K; `python -m iqkq info` lists the ones iqkq has)") from None

    @property
    def label(self) -> str:
        return f"rule {self.where} {self.pattern}={self.type}" if self.where else f"rule {self.pattern}={self.type}"

    def matches(self, name: str) -> bool:
        return self._re.search(name) is not None


def _parse_item(item: str, where: str) -> Rule:
    item = item.strip()
    if "=" not in item:
        raise CookError(f"{where}: {item!r} is not a regex=type rule")
    pat, typ = item.rsplit("=", 1)
    if not typ.strip():
        raise CookError(f"{where}: {item!r} has no type after '='")
    return Rule(pat.strip(), typ.strip(), where)


def parse_rules(rules: Union[None, str, Mapping, Iterable]) -> List[Rule]:
    """Rules from ik_llama.cpp's ``--custom-q`` syntax (``"regex=type,regex=type"``), a list of
    such strings, ``(regex, type)`` pairs or :class:`Rule` objects, or a mapping regex -> type.
    Order is kept: the first rule whose regex ``re.search``-es a name decides its type.

    Raises CookError: a bad regular expression or an unknown type name (naming the rule).

    Example:
        >>> [(r.pattern, r.type) for r in iqkq.cook.parse_rules("ffn_down=q8_0,attn=iq4_ks")]
        [('ffn_down', 'q8_0'), ('attn', 'iq4_ks')]
    """
    if rules is None:
        return []
    if isinstance(rules, str):
        items = [s for s in rules.split(",") if s.strip()]
        return [_parse_item(s, f"--custom-q rule {i + 1}") for i, s in enumerate(items)]
    if isinstance(rules, Mapping):
        return [Rule(str(k), str(v), f"{i + 1}") for i, (k, v) in enumerate(rules.items())]
    out: List[Rule] = []
    for i, r in enumerate(rules):
        if isinstance(r, Rule):
            out.append(r)
        elif isinstance(r, str):
            out.append(_parse_item(r, f"{i + 1}"))
        elif isinstance(r, (tuple, list)) and len(r) == 2:
            out.append(Rule(str(r[0]), str(r[1]), f"{i + 1}"))
        else:
            raise CookError(f"rule {i + 1}: expected 'regex=type', a (regex, type) pair or a Rule, got {r!r}")
    return out


def load_recipe(path) -> List[Rule]:
    """Rules from a recipe file: one ``regex=type`` per line, lines starting with ``#`` and blank
    lines ignored (the type is after the last ``=``).

    Raises CookError: a missing file, or a bad line (naming file and line number)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except OSError as e:
        raise CookError(f"recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise CookError(f"recipe {path}: not a UTF-8 text file ({e.reason})") from None
    out = []
    for i, line in enumerate(lines, 1):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        out.append(_parse_item(s, f"{os.path.basename(path)}:{i}"))
    return out


# ----------------------------------------------------------------------------- the plan
@dataclass
class PlanEntry:
    """What happens to one tensor.

    Attributes:
        index: position in the file (0-based). name, shape (numpy order).
        src_type, dst_type: ggml type names. src_nbytes, dst_nbytes: data bytes.
        action: ``"quantize"`` (from f32 / f16 / bf16), ``"requantize"`` (from a type iqkq can
            dequantize) or ``"copy"`` (bytes unchanged).
        reason: why a tensor is copied (``"1-D"``, ``"norm"``, ``"no rule"``...), else "".
        rule: the :class:`Rule` that chose the type (None: the default).
        wanted: the type the rule / default asked for, when a fallback or interleave rule changed it.
        notes: fallback and token-embedding messages.
        imatrix_key: the imatrix entry used, or None. imatrix: its weights ((K,) or (E, K)).
    """

    index: int
    name: str
    shape: Tuple[int, ...]
    src_type: str
    src_type_id: int
    src_nbytes: int
    dst_type: str
    dst_type_id: int
    dst_nbytes: int
    action: str
    reason: str = ""
    rule: Optional[Rule] = None
    wanted: Optional[str] = None
    fallback: bool = False
    notes: List[str] = field(default_factory=list)
    imatrix_key: Optional[str] = None
    imatrix: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def quantized(self) -> bool:
        return self.action != "copy"

    @property
    def ne_str(self) -> str:
        return "×".join(str(s) for s in reversed(self.shape))


@dataclass
class Plan:
    """The whole cook, decided before any work: entries in file order, output metadata and size.

    Attributes: src (path), entries, metadata (:class:`iqkq.gguf.GGUFMetadata` of the output),
    alignment, out_size (bytes of the output file), n_fallback, imatrix (the IMatrix or None).
    """

    src: str
    entries: List[PlanEntry]
    metadata: Any
    alignment: int
    out_size: int
    n_fallback: int
    imatrix: Any = None
    ftype: Optional[int] = None

    @property
    def src_bytes(self) -> int:
        return sum(e.src_nbytes for e in self.entries)

    @property
    def dst_bytes(self) -> int:
        return sum(e.dst_nbytes for e in self.entries)

    def lines(self) -> List[str]:
        """The plan as text: one line per tensor and a summary (what ``--dry-run`` prints)."""
        n = len(self.entries)
        w = len(str(n))
        nw = max((len(e.name) for e in self.entries), default=10)
        sw = max((len(e.ne_str) for e in self.entries), default=5)
        out = []
        for e in self.entries:
            what = e.action if not e.reason else f"{e.action} ({e.reason})"
            extra = "".join(f"; {x}" for x in e.notes)
            if e.quantized and self.imatrix is not None:
                extra += f"; imatrix {e.imatrix_key}" if e.imatrix_key else "; no imatrix entry"
            out.append(f"[{e.index + 1:>{w}}/{n}] {e.name:<{nw}} {e.ne_str:>{sw}} {e.src_type:>7} → {e.dst_type:<9}"
                       f" {_mb(e.src_nbytes):>9} → {_mb(e.dst_nbytes):>9}  {what}{extra}")
        nq = sum(e.quantized for e in self.entries)
        out.append(f"{n} tensors: {nq} quantized, {n - nq} copied, {self.n_fallback} with fallback quantization; "
                   f"{_mb(self.src_bytes)} → {_mb(self.dst_bytes)} of tensor data; output file {_mb(self.out_size)} "
                   f"({self.out_size} bytes)")
        return out


def _mb(n: int) -> str:
    mb = n / 1e6
    return f"{mb:.1f} MB" if mb >= 10 else f"{mb:.2f} MB" if mb >= 1 else f"{mb:.3f} MB"


def _n_dims(shape: Sequence[int]) -> int:
    # ggml_n_dims: trailing dimensions of size 1 (in ggml order) do not count
    ne = list(reversed(shape))
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def _skip_reason(name: str, type_id: int, shape) -> Optional[str]:
    """Why llama-quantize leaves a tensor as it is (None: it is quantized)."""
    if type_id in _INT_TYPES:
        return "integer tensor"
    if not name.endswith("weight"):
        return "name does not end in 'weight'"
    if _n_dims(shape) < 2:
        return "1-D"
    if "_norm.weight" in name:
        return "norm"
    if "ffn_gate_inp.weight" in name:
        return "expert gating"
    if name in ("position_embd.weight", "token_types.weight"):
        return "positional / token-type embedding"
    for s in ("ssm_conv1d", "ssm_x.weight", "ssm_dt.weight"):
        if s in name:
            return "Mamba small 2-D weight"
    if "attn_rel_b.weight" in name:
        return "relative position bias"
    return None


def _iqkq_types() -> Dict[str, Any]:
    from ._types import types

    return {t.name.lower(): t for t in types()}


def _canon(name: str) -> str:
    from ._ggml import ggml_type

    return ggml_type(name).name


def _open_imatrix(imatrix):
    from .imatrix import IMatrix, read

    if imatrix is None:
        return None
    if isinstance(imatrix, IMatrix):
        return imatrix
    if isinstance(imatrix, (str, os.PathLike)):
        p = os.fspath(imatrix)
        if not os.path.isfile(p):
            raise CookError(f"imatrix {p}: no such file")
        try:
            return read(p)
        except OSError as e:
            raise CookError(f"imatrix {p}: {e.strerror or e}") from None
        except ValueError as e:
            raise CookError(str(e)) from None
    if isinstance(imatrix, Mapping):
        return IMatrix(imatrix)
    raise CookError(f"imatrix must be a file path, an iqkq.imatrix.IMatrix or a mapping name -> weights, "
                    f"not {type(imatrix).__name__}")


def _trunc(s: str) -> str:
    b = s.encode("utf-8", "surrogateescape")[:_STR_MAX]
    return b.decode("utf-8", "surrogateescape")


def plan(src, rules=(), *, imatrix=None, default: Optional[str] = None) -> Plan:
    """Decide what happens to every tensor of ``src`` (see :func:`quantize_model`), and the
    output's metadata and size, without doing any work. Every error a cook can meet in its
    inputs is raised here.

    Raises:
        CookError: bad rules, an unknown default type, a final type iqkq does not have (naming
        the tensor and the rule), a row length no type can take, an imatrix entry of the wrong
        length, a very-low-bit type without imatrix entry. OSError / ValueError: ``src`` cannot
        be read as GGUF.
    """
    from . import gguf as G
    from ._ggml import ggml_type

    rules = rules if (isinstance(rules, list) and all(isinstance(r, Rule) for r in rules)) else parse_rules(rules)
    if default is not None:
        try:
            ggml_type(default)
        except ValueError:
            raise CookError(f"--default: unknown type {default!r}") from None
        except TypeError:
            raise CookError(f"default must be a type name, not {type(default).__name__}") from None
    im = _open_imatrix(imatrix)
    src = os.fspath(src)
    if not os.path.isfile(src):
        raise CookError(f"{src}: no such file")
    have = _iqkq_types()
    with G.read(src) as f:
        meta = f.metadata.copy()
        infos = list(f.tensors)
        alignment = f.alignment
    entries: List[PlanEntry] = []
    n_fallback = 0
    for i, ti in enumerate(infos):
        name, shape = ti.name, tuple(ti.shape)
        st = ggml_type(ti.type_id)
        e = PlanEntry(i, name, shape, st.name, ti.type_id, ti.nbytes, st.name, ti.type_id, ti.nbytes, "copy")
        entries.append(e)
        why = _skip_reason(name, ti.type_id, shape)
        if why is not None:
            e.reason = why
            continue
        rule = next((r for r in rules if r.matches(name)), None)
        want = rule.type if rule is not None else default
        if want is None:
            e.reason = "no rule matches and no default type"
            continue
        want = _canon(want)
        e.rule = rule
        K = shape[-1]
        rows = shape[-2] if len(shape) >= 2 else 1
        label = rule.label if rule is not None else f"default type {want}"
        try:
            new, fb = change_type_if_necessary(want, K)
        except CookError as err:
            raise CookError(f"tensor {name!r} ({label}): {err}") from None
        if fb is not None:
            new = _canon(new)
            e.fallback = True
            e.wanted = want
            e.notes.append(f"fallback {want} → {new}: {fb}")
            n_fallback += 1
        if name in ("token_embd.weight", "per_layer_token_embd.weight"):
            base = INTERLEAVED.get(new.lower())
            if base is not None:
                e.notes.append(f"token embeddings cannot be row-interleaved: {new} → {_canon(base[0])}")
                e.wanted = e.wanted or want
                new = _canon(base[0])
        if new.lower() == st.name.lower():
            e.reason = f"already {st.name}"
            if e.fallback:
                n_fallback -= 1
                e.fallback = False
            continue
        # the source must be something iqkq can turn into floats
        if ti.type_id in _FLOAT_SOURCES:
            action = "quantize"
        elif st.name.lower() in have:
            action = "requantize"
        else:
            e.reason = f"iqkq cannot convert {st.name} to floats"
            if e.fallback:
                n_fallback -= 1
                e.fallback = False
            e.notes.clear()
            continue
        # imatrix: llama-quantize's lookup and length check
        if im is not None:
            try:
                key, w = im.for_tensor(name, shape if len(shape) <= 3 else (int(np.prod(shape[:-1])), K))
            except ValueError as err:
                if name == "token_embd.weight":
                    key, w = None, None
                    e.notes.append(f"imatrix ignored: {err}")
                else:
                    raise CookError(f"tensor {name!r}: {err}") from None
            e.imatrix_key, e.imatrix = key, w
        if e.imatrix is None and new.lower() in _VERY_LOW_BPW and name not in ("token_embd.weight", "output.weight"):
            raise CookError(f"tensor {name!r} ({label}): {new} without an importance matrix entry; "
                            f"llama-quantize refuses this (the result would be garbage)")
        base = INTERLEAVED.get(new.lower())
        if base is not None and rows % base[1]:
            e.notes.append(f"{rows} rows are not a multiple of {base[1]}: {new} → {_canon(base[0])}")
            e.wanted = e.wanted or want
            new = _canon(base[0])
        t = have.get(new.lower())
        if t is None:
            asked = f"asked for {want}" + (f", which became {new}" if new.lower() != want.lower() else "")
            raise CookError(f"tensor {name!r} ({label}, {asked}): iqkq has no type {new} "
                            f"(it has {', '.join(sorted(have))})")
        if K % t.block_size:
            raise CookError(f"tensor {name!r} ({label}): {t.name} needs K to be a multiple of {t.block_size}, "
                            f"K={K}")
        if rows % t.interleave:
            raise CookError(f"tensor {name!r} ({label}): {t.name} needs the rows to be a multiple of "
                            f"{t.interleave}, got {rows}")
        e.action = action
        e.dst_type, e.dst_type_id = t.name, t.ggml_id
        e.dst_nbytes = ggml_type(t.ggml_id).nbytes(shape)

    # metadata, as llama_model_quantize_internal + llama-quantize's kv overrides set them
    meta["general.quantization_version"] = G.GGUFValue(GGML_QNT_VERSION, "UINT32")
    for k in _SPLIT_KEYS:
        if k in meta:
            del meta[k]
    if im is not None and len(im):
        if im.path:  # an imatrix given as a mapping has no file to name
            meta["quantize.imatrix.file"] = G.GGUFValue(_trunc(im.path), "STRING")
        if im.datasets and im.datasets[0]:
            meta["quantize.imatrix.dataset"] = G.GGUFValue(_trunc(im.datasets[0]), "STRING")
        meta["quantize.imatrix.entries_count"] = G.GGUFValue(len(im), "INT32")
        if im.chunk_count > 0:
            meta["quantize.imatrix.chunks_count"] = G.GGUFValue(int(im.chunk_count), "INT32")
    ftype = None
    if default is not None:
        ftype = FTYPE.get(_canon(default).lower())
    if ftype is None:
        counts: Dict[str, int] = collections.Counter()
        for e in entries:
            if e.quantized:
                counts[e.dst_type.lower()] += int(np.prod(e.shape))
        for tname, _ in counts.most_common():
            if tname in FTYPE:
                ftype = FTYPE[tname]
                break
    if ftype is not None:
        meta["general.file_type"] = G.GGUFValue(ftype, "UINT32")
    out_size = _file_size(meta, entries, alignment)
    return Plan(src, entries, meta, alignment, out_size, n_fallback, im, ftype)


def _file_size(meta, entries, alignment: int) -> int:
    n = 4 + 4 + 8 + 8
    for k, v in meta.typed_items():
        n += 8 + len(k.encode("utf-8", "surrogateescape")) + 4 + len(v.encode())
    for e in entries:
        n += 8 + len(e.name.encode("utf-8", "surrogateescape")) + 4 + 8 * len(e.shape) + 4 + 8
    pad = lambda x: (x + alignment - 1) // alignment * alignment  # noqa: E731
    return pad(n) + sum(pad(e.dst_nbytes) for e in entries)


# ----------------------------------------------------------------------------- the work
def _as_source(t, shape):
    """A tensor of the file as something iqkq.quantize takes: 2-D / 3-D floats or a bf16 RawTensor."""
    from .ops import dequantize
    from .tensor import QuantizedTensor, RawTensor

    if len(shape) > 3:
        K = shape[-1]
        shape2 = (int(np.prod(shape[:-1])), K)
        if isinstance(t, np.ndarray):
            t = t.reshape(shape2)
        elif isinstance(t, RawTensor):
            t = RawTensor(t.data, t.type_id, shape2)
    if isinstance(t, QuantizedTensor) or (isinstance(t, RawTensor) and t.type_id not in _FLOAT_SOURCES):
        t = dequantize(t)
    return t


# At most this many float32 bytes of a tensor are converted and quantized at once: a large
# tensor (a 671B model's expert tensors are 15 GB as float32) is quantized in row chunks, so the
# cook's peak memory is this plus the tensor's output bytes, not its float32 copy.
_CHUNK_F32_BYTES = 64 << 20


def _row_chunks(n_experts: int, rows: int, K: int, ilv: int):
    """(expert, first row, row count) of each chunk: chunks never cross experts, and are whole
    multiples of the type's row interleave."""
    per = max(ilv, (_CHUNK_F32_BYTES // (4 * K)) // ilv * ilv)
    for e in range(n_experts):
        for r in range(0, rows, per):
            yield e, r, min(per, rows - r)


def _work(t, shape, qtype, imatrix, threads):
    """Quantize one tensor of the file; the bytes are those of ``quantize`` of the whole tensor
    (rows, and experts, quantize independently), computed chunk by chunk."""
    from .ops import quantize
    from ._types import type_info
    from .tensor import RawTensor

    t0 = time.perf_counter()
    src = _as_source(t, shape)
    shp = tuple(int(d) for d in (src.shape if hasattr(src, "shape") else shape))
    K = shp[-1]
    E, R = (shp[0], shp[1]) if len(shp) == 3 else (1, int(np.prod(shp[:-1])))
    if E * R * K * 4 <= _CHUNK_F32_BYTES:
        q = quantize(src, qtype, imatrix=imatrix, threads=threads)
        return q.data, time.perf_counter() - t0
    info = type_info(qtype)
    row_out = info.row_bytes(K)
    out = np.empty(E * R * row_out, np.uint8)
    if isinstance(src, RawTensor):
        raw = np.asarray(src.data).reshape(-1)
        row_in = raw.size // (E * R)

        def piece(e, r, n):
            a = (e * R + r) * row_in
            return RawTensor(raw[a:a + n * row_in], src.type_id, (n, K))
    else:
        flat = np.asarray(src).reshape(E * R, K)

        def piece(e, r, n):
            return flat[e * R + r:e * R + r + n]
    im = None if imatrix is None else np.asarray(imatrix, np.float32)
    for e, r, n in _row_chunks(E, R, K, info.interleave):
        ime = im[e] if im is not None and im.ndim == 2 else im
        q = quantize(piece(e, r, n), qtype, imatrix=ime, threads=threads)
        a = (e * R + r) * row_out
        out[a:a + n * row_out] = q.data
    return out, time.perf_counter() - t0


def _release(f, offset: int, nbytes: int) -> None:
    # drop the pages of a finished tensor from this process's resident set (the page cache keeps
    # them); file-backed pages of a read-only map are re-read on access, so this is always safe
    mm = getattr(f, "_mm", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(_mmap, "MADV_DONTNEED") or nbytes <= 0:
        return
    page = _mmap.PAGESIZE
    start = offset // page * page
    end = min(len(mm), offset + nbytes)
    if end > start:
        try:
            mm.madvise(_mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass


_WORKER_FILES: Dict[str, Any] = {}
_SYNC_BYTES = 32 << 20  # fdatasync the output every this many bytes (not after every small tensor)


def _dask_task(path: str, name: str, qtype: str, imatrix, threads):
    """Runs on a Dask worker: read one tensor from ``path`` (memory-mapped, opened once per
    worker process), quantize it, return ``(bytes as uint8 array, seconds)``."""
    from . import gguf as G

    if threads is None:  # this worker's share of its machine: CPUs / the worker's Dask threads
        nt = 1
        try:
            from distributed import get_worker

            wk = get_worker()
            nt = int(getattr(wk, "nthreads", None) or wk.state.nthreads)
        except Exception:  # noqa: BLE001 (not in a worker, or another distributed version)
            pass
        threads = max(1, (os.cpu_count() or 1) // max(1, nt))
    f = _WORKER_FILES.get(path)
    if f is None:
        f = _WORKER_FILES[path] = G.read(path)
    ti = f.tensor_info(name)
    data, dt = _work(f.tensor(ti), tuple(ti.shape), qtype, imatrix, threads)
    _release(f, ti.offset, ti.nbytes)
    return np.asarray(data), dt


@dataclass
class CookReport:
    """What :func:`quantize_model` did.

    Attributes: plan, seconds (wall time of the cook, plan excluded), quantize_seconds (sum of
    the per-tensor quantize times), n_quantized, n_copied, n_fallback, src_bytes, dst_bytes,
    out_size, scheduler (a description), workers."""

    plan: Plan
    seconds: float = 0.0
    quantize_seconds: float = 0.0
    tensor_seconds: Dict[str, float] = field(default_factory=dict)
    scheduler: str = "threads"
    workers: int = 1

    @property
    def n_quantized(self) -> int:
        return sum(e.quantized for e in self.plan.entries)

    @property
    def n_copied(self) -> int:
        return len(self.plan.entries) - self.n_quantized

    @property
    def n_fallback(self) -> int:
        return self.plan.n_fallback

    @property
    def src_bytes(self) -> int:
        return self.plan.src_bytes

    @property
    def dst_bytes(self) -> int:
        return self.plan.dst_bytes

    @property
    def out_size(self) -> int:
        return self.plan.out_size


class _Dask:
    def __init__(self, spec, threads):
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise CookError('Dask is not installed: pip install "iqkq[dask]" (or pip install "dask[distributed]")') \
                from None
        self.cluster = None
        self.own_client = False
        self.threads = threads  # iqkq threads per task (None: each worker's share of its machine)
        if isinstance(spec, str):
            s = spec.strip()
            if s == "local" or s.startswith("local:"):
                n = s[6:] if s.startswith("local:") else ""
                try:
                    nw = int(n) if n else max(1, (os.cpu_count() or 1) // max(1, threads or 1))
                except ValueError:
                    raise CookError(f"--dask {spec!r}: expected local[:WORKERS] with a positive integer") from None
                if nw < 1:
                    raise CookError(f"--dask {spec!r}: the number of workers must be >= 1")
                self.cluster = LocalCluster(n_workers=nw, threads_per_worker=1, processes=True,
                                            dashboard_address=None, silence_logs=40)
                self.threads = threads or max(1, (os.cpu_count() or 1) // nw)
                self.client = Client(self.cluster)
                self.desc = f"dask LocalCluster, {nw} workers"
            else:
                try:
                    self.client = Client(s, timeout="10s")
                except (OSError, TimeoutError, ValueError) as e:
                    raise CookError(f"--dask {spec}: cannot connect to the scheduler: {e}") from None
                self.desc = f"dask {s}"
            self.own_client = True
        else:  # a distributed.Client
            self.client = spec
            self.desc = f"dask {getattr(spec, 'scheduler', spec)}"
        try:
            self.n_workers = max(1, len(self.client.scheduler_info().get("workers", {})))
        except Exception:  # noqa: BLE001 (any client problem: assume one)
            self.n_workers = 1

    def close(self):
        if self.own_client:
            try:
                self.client.close()
            finally:
                if self.cluster is not None:
                    self.cluster.close()


def quantize_model(src, dst, rules=(), *, imatrix=None, default: Optional[str] = None, threads: Optional[int] = None,
                   scheduler=None, progress: bool = True, dry_run: bool = False, max_in_flight: Optional[int] = None,
                   file=None) -> CookReport:
    """Quantize the tensors of the GGUF model ``src`` into ``dst`` by ``rules``, streaming.

    Args:
        src: input GGUF (F32 / F16 / BF16 tensors are quantized; tensors of iqkq's types are
            re-quantized with a warning; anything else is copied).
        dst: output path; written to a temporary file renamed into place when complete.
        rules: ik_llama.cpp ``--custom-q`` rules (see :func:`parse_rules`; a list of Rules, e.g.
            from :func:`load_recipe`): the first ``re.search`` match on the tensor name decides.
        imatrix: a legacy ``imatrix.dat`` or GGUF imatrix path, an :class:`iqkq.imatrix.IMatrix`,
            or a mapping name -> weights ((K,) or (n_expert * K) values).
        default: type of the tensors llama-quantize quantizes that no rule matches (None: they
            are copied); also decides ``general.file_type``.
        threads: iqkq threads per tensor (default ``iqkq.get_num_threads()``; on Dask, per worker,
            default the worker's share of its machine).
        scheduler: None (iqkq's own thread pool, in this process); ``"local"`` / ``"local:N"``
            (a dask.distributed LocalCluster of N worker processes); a scheduler address
            (``"tcp://host:8786"``) or a ``distributed.Client``. Bytes are identical either way.
        progress: a line per tensor and a progress bar over bytes on ``file`` (default stderr).
        dry_run: only plan (and, with ``progress``, print the plan); nothing is written.
        max_in_flight: tensors being quantized or waiting to be written at once (default 2,
            on Dask 2 per worker); bounds the memory used.

    Returns:
        A :class:`CookReport`.

    Raises:
        CookError: see :func:`plan`; nothing is written. OSError: reading / writing failed (the
        temporary file is removed, ``dst`` untouched).
    """
    from . import gguf as G
    from .ops import _check_threads

    out = file if file is not None else sys.stderr
    dst = os.fspath(dst)
    threads_given = threads
    if threads is not None:
        threads = _check_threads(threads)
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise CookError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    p = plan(src, rules, imatrix=imatrix, default=default)
    report = CookReport(p)
    if dry_run:
        if progress:
            for line in p.lines():
                print(line, file=out)
        return report
    d = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(d):
        raise CookError(f"{dst}: folder {d} does not exist")
    if os.path.exists(dst) and os.path.samefile(dst, p.src):
        raise CookError(f"{dst}: the output would replace the input")
    for e in p.entries:
        if e.action == "requantize":
            warnings.warn(f"{e.name}: re-quantizing {e.src_type} → {e.dst_type} (quantization errors add up; "
                          f"quantize from the F16 / BF16 model where there is one)", UserWarning, stacklevel=2)

    dsk = None
    if scheduler is not None:
        dsk = _Dask(scheduler, threads_given)
        report.scheduler, report.workers = dsk.desc, dsk.n_workers
    if max_in_flight is None:
        max_in_flight = 2 * (dsk.n_workers if dsk is not None else 1)
    threads_local = threads if threads is not None else _check_threads(None)
    if dsk is None:
        report.scheduler = f"in-process, {threads_local} thread{'s' if threads_local > 1 else ''}"

    bar = None
    t_start = time.perf_counter()
    try:
        with G.read(p.src) as f:
            infos = {ti.name: ti for ti in f.tensors}
            decls = [(e.name, e.shape, e.dst_type_id, e.dst_nbytes) for e in p.entries]
            say = None
            if progress:
                isatty = getattr(out, "isatty", None)
                if isatty is not None and isatty():  # a bar on a terminal; plain lines into files and pipes
                    from tqdm.auto import tqdm

                    bar = tqdm(total=p.src_bytes, unit="B", unit_scale=True, file=out, dynamic_ncols=True,
                               desc=os.path.basename(dst), leave=False)
                    say = lambda s: bar.write(s, file=out)  # noqa: E731
                else:
                    say = lambda s: print(s, file=out, flush=True)  # noqa: E731
            ex = None
            if dsk is None:
                from concurrent.futures import ThreadPoolExecutor

                ex = ThreadPoolExecutor(1, thread_name_prefix="iqkq-cook")
            try:
                with G.GGUFStreamWriter(dst, p.metadata, decls, alignment=p.alignment) as w:
                    pending: collections.deque = collections.deque()
                    todo = iter(p.entries)
                    n_q = 0  # quantize tasks submitted and not yet written
                    unsynced = 0  # bytes written since the last fdatasync
                    more = True
                    n = len(p.entries)
                    width = len(str(n))
                    while True:
                        while more and n_q < max_in_flight:
                            e = next(todo, None)
                            if e is None:
                                more = False
                                break
                            fut = None
                            if e.quantized:
                                ti = infos[e.name]
                                if dsk is None:
                                    fut = ex.submit(_work, f.tensor(ti), e.shape, e.dst_type, e.imatrix, threads_local)
                                else:
                                    fut = dsk.client.submit(_dask_task, p.src, e.name, e.dst_type, e.imatrix,
                                                            dsk.threads, pure=False)
                                n_q += 1
                            pending.append((e, fut, time.perf_counter()))
                        if not pending:
                            break
                        e, fut, t_sub = pending.popleft()
                        ti = infos[e.name]
                        if fut is None:
                            w.write(e.name, f.tensor_bytes(ti))
                            dt = 0.0
                        else:
                            try:
                                data, dt = fut.result()
                            except (ValueError, TypeError) as err:  # e.g. NaN / inf weights
                                raise CookError(f"tensor {e.name!r}: {err}; nothing was written") from None
                            n_q -= 1
                            w.write(e.name, data)
                            del data
                            report.quantize_seconds += dt
                            report.tensor_seconds[e.name] = dt
                        unsynced += e.dst_nbytes
                        if unsynced >= _SYNC_BYTES and (pending or more):
                            # write back while the next tensors are quantized, not all at the final fsync
                            w.flush(sync=True)
                            unsynced = 0
                        _release(f, ti.offset, ti.nbytes)
                        if say is not None:
                            if bar is not None:
                                bar.update(e.src_nbytes)
                            say(_progress_line(e, n, width, dt, p.imatrix is not None))
                        del fut
            finally:
                if ex is not None:
                    ex.shutdown(wait=True, cancel_futures=True)
    finally:
        if bar is not None:
            bar.close()
        if dsk is not None:
            dsk.close()
    report.seconds = time.perf_counter() - t_start
    if progress:
        for line in _summary(report):
            print(line, file=out)
    return report


def _progress_line(e: PlanEntry, n: int, width: int, dt: float, have_im: bool) -> str:
    s = f"[{e.index + 1:>{width}}/{n}] {e.name} {e.src_type} → {e.dst_type} {e.ne_str} " \
        f"{_mb(e.src_nbytes)} → {_mb(e.dst_nbytes)}"
    if e.quantized:
        s += f" {dt:.2f} s"
        if have_im:
            s += "" if e.imatrix_key else " (no imatrix entry: quantized without one)"
        if e.action == "requantize":
            s += " (re-quantized)"
    else:
        s += f" copied ({e.reason})"
    for x in e.notes:
        s += f"; {x}"
    return s


def _summary(r: CookReport) -> List[str]:
    p = r.plan
    mbs = p.src_bytes / 1e6 / r.seconds if r.seconds > 0 else float("inf")
    lines = [f"cooked {len(p.entries)} tensors ({r.n_quantized} quantized, {r.n_copied} copied) in {r.seconds:.2f} s "
             f"({mbs:.1f} MB/s of source, {r.scheduler}); quantize time {r.quantize_seconds:.2f} s; "
             f"model size {_mb(p.src_bytes)} → quant size {_mb(p.dst_bytes)}"]
    if p.n_fallback:
        lines.append(f"WARNING: {p.n_fallback} of {r.n_quantized} tensor(s) required fallback quantization")
    if p.imatrix is not None:
        miss = [e.name for e in p.entries if e.quantized and e.imatrix_key is None]
        if miss:
            lines.append(f"{len(miss)} quantized tensor(s) had no imatrix entry: {', '.join(miss[:8])}"
                         + (" ..." if len(miss) > 8 else ""))
    return lines
