"""Generative reward model: a judge model reasons about a completion, then gives a verdict we parse to [0, 1].

DeepSeek-V3's model-based reward "provides the chain of thought leading to the reward". The judge
reads the prompt, the completion and, when the row has one, the reference answer (column `solution`),
writes its reasoning, then a verdict: `Score: 8/10` (score mode), or `[[A]]`/`[[B]]` (pairwise mode,
the completion against a baseline column, judged in both orders). With `principles` (a file) the
judge rates the completion against those principles (constitutional-AI-style self-feedback).

Templates are Jinja files (built-ins in rewards/templates/, or any path): variables `prompt`,
`completion`, `reference`, `scale`, `principles` (a list), and `completion_a`/`completion_b` in
pairwise mode. Verdicts are parsed strictly but forgivingly (bold, `8/10`, `out of 10`, trailing
text; several scores: the last in the verdict section). An unparseable verdict gives `None` and an
error that keeps the judge's raw text, never a silent 0. Text comes from posttrain.core.generation, so the
judge runs in process (`hf`), on vLLM, or behind any OpenAI-compatible endpoint (`openai`).

Self-rewarding (`backend: policy`): the judge is the policy being trained, as in DeepSeek-V3's constitutional
self-feedback (the model votes on its own answers, e.g. against `principles`). The trainer hands the reward
its live model and tokenizer (`bind_policy`; a `grpo` stage does it for every reward that has the method),
so the judge shares the policy's weights at every step: no copy, generation in eval mode without gradients,
the trainer's random-number stream left as it was. Verdicts are not cached (the judge changes every step).

>>> parse_score("The steps check out.\\n**Score: 8/10**")
0.8
>>> parse_score("Score: 3")
0.3
>>> parse_preference("Both are fine, but A is clearer. [[A]]")
'A'
"""

from __future__ import annotations

import math
import re
import statistics
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

from posttrain.core.errors import PluginError
from rewards.answer import THINK_CLOSE, THINK_OPEN, completion_text
from rewards.protocol import Scored, Verifier

TEMPLATE_DIR = Path(__file__).parent / "templates"
PRINCIPLES_DIR = Path(__file__).parent / "principles"
#: Built-in template names -> files in TEMPLATE_DIR.
TEMPLATES = {"score": "genrm_score.txt", "pairwise": "genrm_pairwise.txt", "principles": "genrm_principles.txt",
             "compact": "genrm_compact.txt"}
Mode = Literal["score", "pairwise"]
#: Kept of a judge's raw text in an error message.
RAW_LIMIT = 2000


class VerdictError(ValueError):
    """The judge's text holds no verdict in the expected format (the message keeps the raw text)."""


# --------------------------------------------------------------------------------------------------
# Verdict parsing

_NUM = r"[-+]?\d+(?:\.\d+)?"
_MARK = r"[*_`\s]*"  # markdown emphasis or spaces around a label or a number
#: A labelled score: `Score: 8/10`, `**Score:** 8 / 10`, `Rating: [[7]]`, `final score of 8 out of 10`, `Score = 85%`.
_SCORE = re.compile(
    rf"\b(?:scores?|rating|grade|verdict|mark){_MARK}(?:[:=]|[-–—](?=\s)|\bis\b|\bof\b)?{_MARK}"
    rf"(?:\[\[|\[|\()?{_MARK}"
    rf"(?P<num>{_NUM}){_MARK}(?:(?P<pct>%)|(?:/|\bout\s+of\b|\bof\b){_MARK}(?P<den>{_NUM}))?(?:\]\]|\]|\))?",
    re.IGNORECASE,
)
_BOXED = re.compile(rf"\\boxed\{{\s*(?P<num>{_NUM})\s*(?:/\s*(?P<den>{_NUM})\s*)?\}}")
_BARE_LINE = re.compile(rf"^{_MARK}(?P<num>{_NUM}){_MARK}/{_MARK}(?P<den>{_NUM}){_MARK}[.!]?{_MARK}$")
#: Where the verdict section starts: the last such heading wins.
_VERDICT_HEADING = re.compile(
    r"(?im)^[#>*_\s]*(?:final\s+(?:verdict|score|rating|judg(?:e)?ment|answer)|verdict|judg(?:e)?ment|conclusion)\b")
_PREFERENCE = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_PREFERENCE_LABELLED = re.compile(
    rf"\b(?:verdict|winner|better\s+response|preferred(?:\s+response)?){_MARK}[:=]?{_MARK}"
    rf"(?:response\s+|assistant\s+|a\s+)?(?P<choice>(?-i:A|B)|tie)\b", re.IGNORECASE)


def verdict_text(judged: str) -> str:
    """The part of a judge's output that may hold the verdict: after `</think>`, from the last verdict heading.

    A `<think>` that never closes means the judge stopped before its verdict.
    """
    text = _answer_part(judged)
    headings = list(_VERDICT_HEADING.finditer(text))
    return text[headings[-1].start():] if headings else text


def _answer_part(judged: str) -> str:
    if THINK_CLOSE in judged:
        return judged.rpartition(THINK_CLOSE)[2]
    if THINK_OPEN in judged:
        raise VerdictError("the judge's reasoning (<think>) never ended, so it gave no verdict")
    return judged


def _sections(judged: str) -> list[str]:
    """Where to look, in order: the verdict section, then all the text after `</think>` (a verdict written
    before a closing remark such as `Conclusion: ...`)."""
    section, whole = verdict_text(judged), _answer_part(judged)
    return [section] if section == whole else [section, whole]


def _score_matches(section: str) -> list[re.Match[str]]:
    matches = list(_SCORE.finditer(section)) or list(_BOXED.finditer(section))
    if not matches:
        lines = [ln for ln in section.strip().splitlines() if ln.strip()]
        bare = _BARE_LINE.match(lines[-1]) if lines else None
        matches = [bare] if bare is not None else []
    return matches


def parse_score(judged: str, scale: float = 10.0) -> float:
    """The verdict's score normalised to [0, 1], on the scale the judge declares (`8/10`, `4 out of 5`,
    `85%`) or else on `scale`, the one it was asked for. The last score of the verdict section wins.

    >>> parse_score("Reasoning: 2+2=4 is right. Score: 4/5. Earlier I thought Score: 1/5")
    0.2
    >>> parse_score("**Verdict**: 7")
    0.7
    """
    matches: list[re.Match[str]] = []
    for section in _sections(judged):
        matches = _score_matches(section)
        if matches:
            break
    if not matches:
        raise VerdictError(f"no score in the judge's verdict (expected e.g. 'Score: 7/{_fmt(scale)}')")
    match = matches[-1]
    num = float(match.group("num"))
    groups = match.groupdict()
    if groups.get("pct"):
        den = 100.0
    elif groups.get("den"):
        den = float(groups["den"])
    else:
        den = float(scale)
    if den <= 0 or not math.isfinite(num):
        raise VerdictError(f"score {match.group(0).strip()!r} has no usable scale")
    if not 0 <= num <= den:
        raise VerdictError(f"score {match.group(0).strip()!r} is outside the scale 0-{_fmt(den)}")
    return num / den


def parse_preference(judged: str) -> Literal["A", "B", "tie"]:
    """The pairwise verdict: `[[A]]`, `[[B]]`, or a tie (`[[C]]`/`[[tie]]`), else a labelled `Verdict: B`;
    the last one of the verdict section wins."""
    for section in _sections(judged):
        marks = list(_PREFERENCE.finditer(section)) or list(_PREFERENCE_LABELLED.finditer(section))
        if marks:
            choice = marks[-1].group(1).upper()
            return "tie" if choice in ("C", "TIE") else choice  # type: ignore[return-value]
    raise VerdictError("no preference in the judge's verdict (expected [[A]], [[B]] or [[C]] for a tie)")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# --------------------------------------------------------------------------------------------------
# Templates and principles


@cache
def _environment() -> Any:
    from jinja2.sandbox import SandboxedEnvironment

    return SandboxedEnvironment(keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True,
                                autoescape=False)


def template_path(name_or_path: str) -> Path:
    """A built-in template name (score, pairwise, principles, compact) or a file path."""
    if name_or_path in TEMPLATES:
        return TEMPLATE_DIR / TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise PluginError(f"genrm: template {name_or_path!r} is neither a built-in ({', '.join(TEMPLATES)}) "
                          "nor a readable file")
    return path


@cache
def load_template(name_or_path: str) -> Any:
    from jinja2 import TemplateSyntaxError

    path = template_path(name_or_path)
    try:
        return _environment().from_string(path.read_text())
    except TemplateSyntaxError as exc:
        raise PluginError(f"genrm: template {path}:{exc.lineno}: {exc.message}") from None


def render(template: str, **variables: Any) -> str:
    """Fill a judge template; a template that uses an unknown variable gets an empty string there."""
    return load_template(template).render(**variables).strip()


def load_principles(name_or_path: str) -> list[str]:
    """Principles from a file, one per line (blank lines and `#` comments skipped, list markers stripped);
    `default` names the built-in rewards/principles/default.txt."""
    path = PRINCIPLES_DIR / f"{name_or_path}.txt" if (PRINCIPLES_DIR / f"{name_or_path}.txt").is_file() \
        else Path(name_or_path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PluginError(f"genrm: cannot read principles file {name_or_path!r}: {exc.strerror or exc}") from None
    principles = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", ln).strip() for ln in lines
                  if ln.strip() and not ln.lstrip().startswith("#")]
    if not principles:
        raise PluginError(f"genrm: principles file {path} has no principles (one per line)")
    return principles


# --------------------------------------------------------------------------------------------------
# The reward


class GenRMReward(Verifier):
    """Generative CoT reward model: a judge's reasoning and verdict, parsed to [0, 1].

    The judge's engine is a `GenerationSpec` and its sampling `SamplingParams` (posttrain.core.generation), given
    whole (`generation=`, `sampling=`) or as their own option names among the keyword arguments, as a recipe's
    `kwargs:` writes them (`backend`, `model`, `base_url`, `api_key_env`, `timeout_s`, `max_retries`, `batch_size`,
    `chat`, `options`, ...; `temperature`, `max_new_tokens`, `seed`, ...). `backend: policy` judges with the
    policy being trained (an `hf` engine bound to the live model). The rest are the judge's own options.
    """

    transient = (("_generator", None), ("_lock", threading.Lock))
    #: Judges batch fewer prompts than GenerationSpec's default: judge prompts hold a whole completion.
    default_batch_size = 16

    def __init__(
        self,
        generation: Any = None,
        sampling: Any = None,
        *,
        backend: Literal["hf", "vllm", "openai", "scripted", "policy"] = "openai",
        n: int = 1,
        template: str | None = None,
        principles: str | None = None,
        mode: Mode = "score",
        scale: float = 10.0,
        cache: bool = True,
        cache_size: int = 100_000,
        reference_column: str = "solution",
        baseline_column: str = "baseline",
        swap: bool = True,
        **engine: Any,
    ):
        if n < 1:
            raise PluginError(f"genrm: n must be at least 1, got {n}")
        if mode not in ("score", "pairwise"):
            raise PluginError(f"genrm: mode must be score or pairwise, got {mode!r}")
        if mode == "pairwise" and principles:
            raise PluginError("genrm: principles rate one completion (mode: score), not a pair")
        if scale <= 0:
            raise PluginError(f"genrm: scale must be positive, got {scale}")
        self.mode = mode
        self.template = template or ("pairwise" if mode == "pairwise" else "principles" if principles else "score")
        load_template(self.template)  # fail at construction, not on the first batch
        self.principles = load_principles(principles) if principles else None
        self.n = n
        self.scale = float(scale)
        self.reference_column = reference_column
        self.baseline_column = baseline_column
        self.swap = swap
        self.spec, self.sampling = self._engine(generation, sampling, backend, engine)
        self.backend = backend if generation is None else self.spec.backend
        model = self.spec.model
        if self.backend == "policy" and model:
            raise PluginError("genrm: backend 'policy' judges with the policy being trained; it takes no `model`")
        if not model and self.backend != "policy":
            raise PluginError(f"genrm: backend {self.backend!r} needs `model` (a path or hub name for hf/vllm, the "
                              "served model's name for openai, a module:function for scripted)")
        if self.backend == "openai" and not self.spec.base_url:
            raise PluginError("genrm: backend openai needs base_url, e.g. http://127.0.0.1:8000/v1")
        self.use_cache = cache and self.backend != "policy"
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float | None, str | None]] = OrderedDict()
        self._generator: Any = None
        self._lock = threading.Lock()
        #: Counters: judge prompts sent and answered from the cache.
        self.judged = 0
        self.cache_hits = 0

    def __repr__(self) -> str:
        return f"GenRMReward(backend={self.backend!r}, model={self.spec.model!r}, mode={self.mode!r})"

    def _engine(self, generation: Any, sampling: Any, backend: str, engine: dict[str, Any]) -> tuple[Any, Any]:
        """The judge's GenerationSpec and SamplingParams: given whole, or from the keyword arguments that are theirs
        (each model validates its own options; a name neither knows is an error naming both lists)."""
        from posttrain.core.generation import GenerationSpec, SamplingParams

        spec_keys, sampling_keys = set(GenerationSpec.model_fields), set(SamplingParams.model_fields)
        unknown = sorted(set(engine) - spec_keys - sampling_keys)
        if unknown:
            raise PluginError(f"genrm: unknown option(s) {unknown}; the judge's own: mode, n, template, principles, "
                              "scale, cache, cache_size, reference_column, baseline_column, swap; its engine's "
                              f"(GenerationSpec): {', '.join(sorted(spec_keys))}; its sampling (SamplingParams): "
                              f"{', '.join(sorted(sampling_keys))}")
        spec_options = {k: v for k, v in engine.items() if k in spec_keys}
        sampling_options = {k: v for k, v in engine.items() if k in sampling_keys}
        sampling_options.setdefault("temperature", 0.0 if self.n == 1 else 0.7)
        sampling_options.setdefault("max_new_tokens", 512)
        try:
            if generation is None:
                spec = GenerationSpec(**{"batch_size": self.default_batch_size, **spec_options,
                                         "backend": "hf" if backend == "policy" else backend})
            elif spec_options:
                raise PluginError(f"genrm: give the engine as `generation` or as options, not both ({spec_options})")
            elif isinstance(generation, dict):
                spec = GenerationSpec(**{"batch_size": self.default_batch_size, **generation})
            else:
                spec = GenerationSpec.model_validate(generation)
            if sampling is not None and set(engine) & sampling_keys:
                raise PluginError("genrm: give the sampling as `sampling` or as options, not both")
            params = SamplingParams.model_validate(sampling if sampling is not None else sampling_options)
        except ValueError as exc:
            raise PluginError(f"genrm: bad options: {exc}") from None
        return spec, params

    def bind_policy(self, model: Any, tokenizer: Any) -> bool:
        """Judge with this live model (`backend: policy`): the trainer's own object, so every verdict uses the
        weights of the current step. Other backends ignore it (returns whether it was bound)."""
        if self.backend != "policy":
            return False
        from posttrain.core.generation import HFGenerator

        with self._lock:
            self._generator = HFGenerator(model, tokenizer, self.spec)
        return True

    # ---- building judge prompts

    def judge_prompts(self, prompt: Any, completion: Any, reference: Any = None,
                      baseline: Any = None) -> list[tuple[str, bool]]:
        """(judge prompt, flipped) for one row: one prompt in score mode; in pairwise mode the completion as A
        and, with `swap`, also as B (flipped: the judge's preference for A is the baseline's)."""
        common = {"prompt": completion_text(prompt) if isinstance(prompt, list) else str(prompt or ""),
                  "reference": None if reference is None or reference == "" else str(reference),
                  "scale": _fmt(self.scale), "principles": self.principles}
        answer = completion_text(completion)
        if self.mode == "score":
            return [(render(self.template, completion=answer, **common), False)]
        other = completion_text(baseline)
        out = [(render(self.template, completion_a=answer, completion_b=other, **common), False)]
        if self.swap:
            out.append((render(self.template, completion_a=other, completion_b=answer, **common), True))
        return out

    # ---- scoring

    def score_rows(self, completions: Sequence[Any], prompts: Sequence[Any] | None = None,
                   **kwargs: Any) -> list[Scored]:
        rows = len(completions)
        prompts = list(prompts) if prompts is not None else [""] * rows
        if len(prompts) != rows:
            raise ValueError(f"genrm: {len(prompts)} prompts for {rows} completions")
        references = _column(kwargs, self.reference_column, rows)
        baselines = _column(kwargs, self.baseline_column, rows)
        if self.mode == "pairwise" and baselines is None:
            raise ValueError(f"genrm pairwise: no {self.baseline_column!r} column to compare the completions with "
                             "(set baseline_column)")
        per_row = [self.judge_prompts(prompts[i], completions[i], references[i] if references else None,
                                      baselines[i] if baselines else None) for i in range(rows)]
        results = self._judge({p for row in per_row for p, _ in row})
        out = []
        for row in per_row:
            parts = [(results[p], flipped) for p, flipped in row]
            failed = [err for (score, err), _ in parts if score is None]
            if failed:
                out.append(Scored(None, failed[0]))
            else:
                out.append(Scored(statistics.fmean(1.0 - s if flipped else s for (s, _), flipped in parts)))
        return out

    def _judge(self, judge_prompts: set[str]) -> dict[str, tuple[float | None, str | None]]:
        """(score, error) per distinct judge prompt, from the cache or the judge's n samples averaged.

        The score is the verdict in [0, 1]; in pairwise mode, how often the judge preferred A (a tie is half).
        """
        out: dict[str, tuple[float | None, str | None]] = {}
        todo = []
        with self._lock:  # the cache and counters are shared by every thread scoring through this object
            for p in sorted(judge_prompts):
                if self.use_cache and p in self._cache:
                    self._cache.move_to_end(p)
                    out[p] = self._cache[p]
                    self.cache_hits += 1
                else:
                    todo.append(p)
            self.judged += len(todo)
        if not todo:
            return out
        samples, failures = self._generate(todo)
        answered = {}
        for p, texts, failure in zip(todo, samples, failures, strict=True):
            if failure is not None:
                out[p] = (None, f"genrm: the judge did not answer: {failure}")
                continue  # transport failures are not cached: the next call asks again
            out[p] = answered[p] = self._verdict(texts)
        if self.use_cache:
            with self._lock:
                for p, verdict in answered.items():
                    self._cache[p] = verdict
                    if len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
        return out

    def _verdict(self, texts: list[str]) -> tuple[float | None, str | None]:
        """Mean of the samples' verdicts; samples that do not parse are left out, all failing is an error."""
        values, problems = [], []
        for text in texts:
            try:
                if self.mode == "score":
                    values.append(parse_score(text, self.scale))
                else:
                    values.append({"A": 1.0, "tie": 0.5, "B": 0.0}[parse_preference(text)])
            except VerdictError as exc:
                problems.append(f"{exc}; the judge wrote: {text[:RAW_LIMIT]!r}")
        if values:
            return statistics.fmean(values), None
        if not problems:
            return None, "genrm: the judge returned no text"
        return None, f"genrm: unparseable verdict ({len(problems)}/{len(texts)} samples): {problems[0]}"

    def setup(self) -> None:
        """Check the judge now: an `hf` or `vllm` judge whose `model` is neither a model folder nor a hub model
        fails in one line naming the path; an `hf` or `scripted` judge is loaded (a vLLM engine and an OpenAI
        server are started or asked on the first batch). A `policy` judge has nothing to check: the trainer binds
        the live policy when it starts."""
        if self.backend == "policy":
            return
        if self.spec.loads_weights:
            from posttrain.core.hub import check_model_source

            check_model_source(str(self.spec.model), f"genrm ({self.spec.backend} judge)",
                               "`model` is a stage's name, a model folder or a hub model")
        if self.spec.backend in ("hf", "scripted"):
            self._judge_generator()

    def _judge_generator(self) -> Any:
        with self._lock:
            if self._generator is None and self.backend == "policy":
                raise PluginError("genrm: backend 'policy' judges with the policy being trained, and none is bound: "
                                  "use it as a reward of a grpo stage (or call bind_policy(model, tokenizer))")
            if self._generator is None:
                from posttrain.core.generation import make_generator

                self._generator = make_generator(self.spec)
            return self._generator

    def _generate(self, judge_prompts: list[str]) -> tuple[list[list[str]], list[str | None]]:
        generator = self._judge_generator()
        if self.backend != "policy":
            return generator.generate_with_errors(judge_prompts, self.n, self.sampling)
        import torch

        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):  # seeded judge sampling must not reseed the trainer's stream
            return generator.generate_with_errors(judge_prompts, self.n, self.sampling)


def _column(kwargs: dict[str, Any], name: str, rows: int) -> list[Any] | None:
    value = kwargs.get(name)
    if isinstance(value, list | tuple) and len(value) == rows:
        return list(value)
    return None
