"""An lmms-eval model class for any model the adapters support, pruned or dense, MoT probe included.

Registered with lmms-eval as ``probe``: ``lmms-eval --model probe --model_args pretrained=DIR`` loads
through :func:`probe.models.loading.load_model`; in Python, pass a model already in memory
(``ProbeLVLM(loaded=LoadedModel(...))``), which is how pruned models and MoT probes are scored
without a round trip to disk.

Prompts: visual requests go through the family's chat template with their images; ``generate_until``
answers greedily (unless the task asks to sample) and cuts the answer at the task's stop strings.
``loglikelihood`` scores the continuation after the chat template's assistant prompt when the request
has images, after the plain context (language modelling) when it has none. It returns a loss, the
negative log-likelihood of the continuation: summed over its tokens (``loglikelihood="sum"``, the
default, the log-probability of the whole option) or their mean (``"mean"``, what lmms-eval's
``llava_hf`` returns: the mean token loss). lmms-eval's multiple-choice scoring picks the choice with
the lowest value (``argmin``); options of different token lengths can rank differently under the two,
so say which one a result used.

``token_pruning`` (e.g. ``fastv(k=2, ratio=0.5)``; in lmms-eval's ``--model_args`` as
``token_pruning=fastv,token_k=2,token_ratio=0.5``) drops visual tokens inside the decoder at inference
(:mod:`probe.token_pruning`); a checkpoint pruned with a token method carries it in its config
(``probe_token_pruning``) and is served with it unless told otherwise (``token_pruning=none``).
Log-likelihoods then read the logits of the last positions, which are all text.

``batch_size`` (``--model_args batch_size=16``, or ``auto``: :mod:`probe.evaluation.batching`) scores
several requests at once: generation pads prompts on the left and cuts each answer at its own end and
stop strings. The options of one multiple-choice item already run as one batch from their shared
context's cache, whatever the batch size; requests with a context of their own (one continuation each)
run together, each full sequence padded on the right so that its own tokens keep their positions. Greedy
answers and log-likelihoods equal batch one's within float tolerance; sampled answers draw differently.
Token pruning, whose prefill decides per sequence, is served at batch one (the wrapper says so).
Data-parallel runs (``torchrun``, one process per GPU) split the requests by rank as lmms-eval does;
each process serves its share on ``cuda:LOCAL_RANK`` when the device is ``cuda``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from lmms_eval.api.instance import GenerationResult, Instance
from lmms_eval.api.model import lmms
from lmms_eval.api.registry import register_model
from PIL import Image

from probe.calibration.capture import move
from probe.core.progress import progress_bar
from probe.errors import ProbeError
from probe.evaluation.batching import BatchRunner, grouped_order, parse_batch_size
from probe.evaluation.data_parallel import data_parallel_device, data_parallel_rank
from probe.models.compat import cache_keyword, forget_rope_deltas, returned_cache
from probe.models.loading import LoadedModel, load_model, parse_dtype
from probe.models.vision_cache import VisionFeatureCache

IMAGE_PLACEHOLDER = "<image>"
LOGLIKELIHOOD_REDUCTIONS = ("sum", "mean")


class UnsupportedRequestError(ProbeError):
    """A request the probe wrapper cannot serve (e.g. video input) or a setting it does not know."""


@register_model("probe")
class ProbeLVLM(lmms):
    """lmms-eval's view of a toolkit model: ``batch_size`` requests at a time (one by default)."""

    def __init__(
        self,
        pretrained: str = "reference",
        loaded: LoadedModel | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        max_pixels: int | None = None,
        vision_cache: VisionFeatureCache | None = None,
        show_progress: bool = True,
        loglikelihood: str = "sum",
        token_pruning: str | None = None,
        batch_size: int | str = 1,
        **unused: Any,
    ) -> None:
        super().__init__()
        if loglikelihood not in LOGLIKELIHOOD_REDUCTIONS:
            raise UnsupportedRequestError(f"loglikelihood must be one of {', '.join(LOGLIKELIHOOD_REDUCTIONS)}, "
                                          f"got {loglikelihood!r}")
        self.reduction = loglikelihood
        requested = parse_batch_size(batch_size)
        self._rank, self._world_size = data_parallel_rank()
        self.loaded = loaded or load_model(pretrained, dtype=parse_dtype(dtype), device=data_parallel_device(device),
                                           max_pixels=int(max_pixels) if max_pixels else None)
        self.vision_cache = vision_cache
        self.show_progress = show_progress and self._rank == 0
        self.token_runtime = self._token_runtime(token_pruning, unused)
        if requested != 1 and self.token_runtime is not None:
            print(f"probe: token pruning ({self.token_runtime.pruner.spec()}) serves one request at a time; "
                  f"batch size {requested} is not used", file=sys.stderr)
            requested = 1
        self.batch_size_setting = requested
        self._batches = BatchRunner(requested, self._device)

    def _token_runtime(self, spec: str | None, extra: dict[str, Any]):
        """The token-pruning runtime the settings (or the checkpoint's config) ask for, checked now."""
        from probe.token_pruning.base import make_pruner
        from probe.token_pruning.runtime import TokenPruningRuntime

        settings = {k.removeprefix("token_"): v for k, v in extra.items() if k.startswith("token_")}
        if spec is None:
            spec = getattr(self._model.config, "probe_token_pruning", None)
        if spec and settings and "(" not in spec:
            spec = f"{spec}({', '.join(f'{k}={v}' for k, v in settings.items())})"
        pruner = make_pruner(spec)
        if pruner is None:
            return None
        if any(type(m).__name__ == "RoutedLinear" for m in self._model.modules()):
            raise UnsupportedRequestError("token pruning cannot serve the MoT probe (its routing reads the whole "
                                          "sequence)")
        runtime = TokenPruningRuntime(pruner, self.loaded.adapter)
        runtime.check(self._model)
        return runtime

    # --- helpers -------------------------------------------------------------------------------
    @property
    def _model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def _device(self) -> torch.device:
        return next(self._model.parameters()).device

    @property
    def device(self) -> torch.device:
        """The device the model's first weights are on (lmms-eval's distributed counters go there)."""
        return self._device

    @property
    def batched(self) -> bool:
        """Whether requests are served several at a time."""
        return self.batch_size_setting != 1

    @contextlib.contextmanager
    def _serving(self) -> Iterator[None]:
        cache = self.vision_cache
        runtime = self.token_runtime
        with cache.attached(self._model, self.loaded.adapter) if cache is not None else contextlib.nullcontext(), \
                runtime.attached(self._model) if runtime is not None else contextlib.nullcontext():
            yield

    def _prepared(self, inputs: dict) -> dict:
        runtime = self.token_runtime
        return runtime.prepare(inputs, self._model.config) if runtime is not None else inputs

    def _request(self, input_ids: torch.Tensor) -> contextlib.AbstractContextManager:
        runtime = self.token_runtime
        return runtime.request(input_ids, self._model.config) if runtime is not None else contextlib.nullcontext()

    def _doc_visuals(self, doc_to_visual: Any, task: str, split: str, doc_id: int) -> list[Image.Image]:
        if doc_to_visual is None:
            return []
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
        flat = [v for group in visuals for v in (group if isinstance(group, (list, tuple)) else [group])]
        for v in flat:
            if not isinstance(v, Image.Image):
                raise UnsupportedRequestError(
                    f"task {task!r} gives a {type(v).__name__} visual; only images are supported (no video or audio)"
                )
        return [v.convert("RGB") for v in flat]

    @staticmethod
    def _messages(context: str, images: list[Image.Image]) -> list[dict]:
        """One user turn: the images, then the context without lmms-eval's image placeholder."""
        text = context.replace(IMAGE_PLACEHOLDER, "").strip()
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
        return [{"role": "user", "content": content}]

    def _visual_inputs(self, context: str, images: list[Image.Image], answer: str | None = None) -> dict:
        messages = self._messages(context, images)
        if answer is None:
            inputs = self.loaded.adapter.build_inputs(self.loaded.processor, messages, images,
                                                      add_generation_prompt=True)
        else:
            prompt = self.loaded.adapter.render_prompt(self.loaded.processor, messages, add_generation_prompt=True)
            inputs = dict(self.loaded.processor(text=[prompt + answer], images=images, return_tensors="pt",
                                                **self.loaded.adapter.processor_kwargs()))
            self.loaded.adapter.check_inputs(inputs)
        return move(inputs, self._device, next(self._model.parameters()).dtype)

    # --- lmms-eval interface -------------------------------------------------------------------
    @staticmethod
    def _generation_settings(gen_kwargs: dict | None) -> tuple[dict, list[str]]:
        """(``generate``'s settings, the stop strings) for one request's generation arguments."""
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(gen_kwargs.get("do_sample")) and float(gen_kwargs.get("temperature") or 0) > 0
        settings = {"max_new_tokens": int(gen_kwargs.get("max_new_tokens", 128)), "do_sample": sample}
        if sample:
            settings.update(temperature=float(gen_kwargs["temperature"]), top_p=float(gen_kwargs.get("top_p") or 1.0))
        return settings, until

    @staticmethod
    def _cut(text: str, until: list[str]) -> str:
        for stop in until:
            if stop and stop in text:
                text = text.split(stop)[0]
        return text

    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        prepared = []
        for request in requests:
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            settings, until = self._generation_settings(gen_kwargs)
            prepared.append((context, settings, until, self._doc_visuals(doc_to_visual, task, split, doc_id)))
        with self._serving(), progress_bar("generate", len(requests), self.show_progress) as bar:
            if self.batched:
                return self._generate_batched(prepared, bar.advance)
            answers = []
            tokenizer = self.loaded.processor.tokenizer
            for context, settings, until, images in prepared:
                inputs = self._prepared(self._visual_inputs(context, images))
                with self._request(inputs["input_ids"]):
                    out = self._model.generate(**inputs, **settings)
                text = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
                answers.append(self._cut(text, until))
                bar.advance()
        return answers

    @property
    def _pad_id(self) -> int:
        """The id rows are padded with: the tokenizer's pad token, else its end-of-sequence token."""
        tokenizer = self.loaded.processor.tokenizer
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _end_ids(self) -> set[int]:
        """The token ids that end an answer (the generation config's end-of-sequence ids)."""
        eos = getattr(getattr(self._model, "generation_config", None), "eos_token_id", None)
        if eos is None:
            eos = self.loaded.processor.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])

    def _generate_batched(self, prepared: list[tuple], advance: Callable[[int], None]) -> list[str]:
        """Greedy (or sampled) answers, requests with the same settings and kind (with or without images)
        generated together, prompts padded on the left; each row cut at its first end token."""
        tokenizer = self.loaded.processor.tokenizer
        end_ids = self._end_ids()
        keys = [(tuple(sorted(settings.items())), bool(images)) for _, settings, _, images in prepared]
        lengths = [len(context) + 1000 * len(images) for context, _, _, images in prepared]
        answers = [""] * len(prepared)

        def step(batch: list[int]) -> list[str]:
            inputs = self.loaded.adapter.build_batch_inputs(
                self.loaded.processor, [self._messages(prepared[i][0], prepared[i][3]) for i in batch],
                [prepared[i][3] for i in batch], add_generation_prompt=True, padding_side="left")
            inputs = move(inputs, self._device, next(self._model.parameters()).dtype)
            out = self._model.generate(**inputs, **prepared[batch[0]][1], pad_token_id=self._pad_id)
            texts = []
            for row in out[:, inputs["input_ids"].shape[1]:].tolist():
                ends = [k for k, t in enumerate(row) if t in end_ids]
                texts.append(tokenizer.decode(row[: ends[0] + 1] if ends else row, skip_special_tokens=True))
            advance(len(batch))
            return texts

        for group in grouped_order(keys, lengths):
            for index, text in zip(group, self._batches.run(group, step)):
                answers[index] = self._cut(text, prepared[index][2])
        return answers

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[GenerationResult]:
        """(negative log-likelihood, summed or averaged over the continuation's tokens, is greedy) per
        request, each in a ``GenerationResult``: lmms-eval's evaluator turns a bare tuple into its string
        but passes a result's payload through.

        The options of one multiple-choice item share their context and images: the context runs once
        and each option continues from its cache (:meth:`options_loglikelihood`), unless a token-pruning
        method is attached, whose prefill sees each full sequence."""
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):
            context, _, doc_to_visual, doc_id, task, split = request.args
            groups.setdefault((context, doc_to_visual, doc_id, task, split), []).append(index)
        results: list[GenerationResult | None] = [None] * len(requests)
        items = []
        for (context, doc_to_visual, doc_id, task, split), members in groups.items():
            continuations = []
            for index in members:
                target = requests[index].args[1]
                doc = None if isinstance(target, str) else self.task_dict[task][split][doc_id]
                continuations.append(str(target if doc is None else target(doc)))
            items.append((context, members, continuations, self._doc_visuals(doc_to_visual, task, split, doc_id)))
        with self._serving(), progress_bar("loglikelihood", len(requests), self.show_progress) as bar:
            if self.batched:  # requests with a context of their own run together; options keep their cache
                alone = [item for item in items if len(item[1]) == 1]
                entries = [(context, continuations[0], images) for context, _, continuations, images in alone]
                for (_, members, _, _), (logprob, greedy) in zip(alone, self._score_batched(entries, bar.advance)):
                    results[members[0]] = GenerationResult(text=(-logprob, greedy))
                items = [item for item in items if len(item[1]) > 1]
            for context, members, continuations, images in items:
                if self.token_runtime is None and len(members) > 1:
                    scored = self.options_loglikelihood(context, continuations, images, reduction=self.reduction)
                else:
                    scored = [self.continuation_loglikelihood(context, c, images, reduction=self.reduction)
                              for c in continuations]
                for index, (logprob, greedy) in zip(members, scored):
                    results[index] = GenerationResult(text=(-logprob, greedy))
                bar.advance(len(members))
        return results

    def _scored_positions(
        self, context: str, continuation: str, images: list[Image.Image]
    ) -> tuple[dict, list[int], int]:
        """(inputs of context + continuation, their ids, first position of the continuation's tokens)."""
        tokenizer = self.loaded.processor.tokenizer
        if images:
            prefix = self._visual_inputs(context, images)["input_ids"][0].tolist()
            inputs = self._visual_inputs(context, images, answer=continuation)
        else:
            prefix = tokenizer(context, add_special_tokens=False)["input_ids"]
            ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
            inputs = {"input_ids": torch.tensor([ids], device=self._device)}
        ids = inputs["input_ids"][0].tolist()
        return inputs, ids, self._continuation_start(prefix, ids, continuation)

    @staticmethod
    def _continuation_start(prefix: list[int], ids: list[int], continuation: str) -> int:
        """The first position of the continuation's tokens in ``ids`` (context + continuation): where they
        part from the context's own ``prefix`` (a merge across the boundary shortens it by one token)."""
        start = len(prefix)
        while start > 0 and ids[:start] != prefix[:start]:
            start -= 1
        start = max(start, 1)
        if start >= len(ids):
            raise UnsupportedRequestError(f"continuation {continuation!r} adds no token to its context")
        return start

    def _score_batched(self, entries: list[tuple[str, str, list[Image.Image]]],
                       advance: Callable[[int], None]) -> list[tuple[float, bool]]:
        """:meth:`continuation_loglikelihood` of each (context, continuation, images), requests of one kind
        (with or without images) run together as full sequences padded on the right, so each row's own
        tokens keep their positions; logits are kept only for the positions some row scores."""
        tokenizer = self.loaded.processor.tokenizer
        keys = [bool(images) for _, _, images in entries]
        lengths = [len(context) + len(c) + 1000 * len(images) for context, c, images in entries]
        scored: list[tuple[float, bool]] = [(0.0, False)] * len(entries)  # every entry is filled below

        def step(batch: list[int]) -> list[tuple[float, bool]]:
            rows = [entries[i] for i in batch]
            if rows[0][2]:
                prefixes = [self._visual_inputs(context, images)["input_ids"][0].tolist()
                            for context, _, images in rows]
                inputs = self.loaded.adapter.build_batch_inputs(
                    self.loaded.processor, [self._messages(context, images) for context, _, images in rows],
                    [images for _, _, images in rows], add_generation_prompt=True,
                    answers=[c for _, c, _ in rows], padding_side="right")
                inputs = move(inputs, self._device, next(self._model.parameters()).dtype)
            else:
                prefixes = [tokenizer(context, add_special_tokens=False)["input_ids"] for context, _, _ in rows]
                full = [tokenizer(context + c, add_special_tokens=False)["input_ids"] for context, c, _ in rows]
                width, pad = max(len(ids) for ids in full), self._pad_id
                inputs = {"input_ids": torch.tensor([ids + [pad] * (width - len(ids)) for ids in full]),
                          "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in full])}
                inputs = move(inputs, self._device, next(self._model.parameters()).dtype)
            lengths_in_batch = inputs["attention_mask"].sum(1).tolist()
            ids = [inputs["input_ids"][r, :n].tolist() for r, n in enumerate(lengths_in_batch)]
            starts = [self._continuation_start(p, i, c) for p, i, (_, c, _) in zip(prefixes, ids, rows)]
            first, last = min(starts) - 1, max(lengths_in_batch) - 1
            keep = torch.arange(first, last, device=self._device)
            logits = self._model(**inputs, logits_to_keep=keep).logits
            out = []
            for r, (row_ids, start) in enumerate(zip(ids, starts)):
                predicting = logits[r, start - 1 - first: len(row_ids) - 1 - first].float()
                out.append(self._reduce(torch.log_softmax(predicting, dim=-1), row_ids[start:], self.reduction))
            advance(len(batch))
            return out

        for group in grouped_order(keys, lengths):
            for index, result in zip(group, self._batches.run(group, step)):
                scored[index] = result
        return scored

    @staticmethod
    def _reduce(logprobs: torch.Tensor, targets: list[int], reduction: str) -> tuple[float, bool]:
        """Sum (or mean) of the targets' log-probabilities, and whether each is the argmax."""
        wanted = torch.tensor(targets, device=logprobs.device)
        chosen = logprobs.gather(1, wanted[:, None])
        total = float(chosen.mean() if reduction == "mean" else chosen.sum())
        return total, bool((logprobs.argmax(-1) == wanted).all())

    @torch.no_grad()
    def options_loglikelihood(
        self, context: str, continuations: list[str], images: list[Image.Image] | None = None, reduction: str = "sum"
    ) -> list[tuple[float, bool]]:
        """:meth:`continuation_loglikelihood` of each continuation after one shared ``context``: the
        tokens all of them share run once with their images, then the continuations' remaining tokens run
        together as one batch from that cache (each row padded at its end, which causal attention hides
        from the row's own tokens)."""
        prepared = [self._scored_positions(context, c, images or []) for c in continuations]
        shared = min(start for _, _, start in prepared)
        first_ids = prepared[0][1]
        length = len(first_ids)
        if any(ids[:shared] != first_ids[:shared] for _, ids, _ in prepared):
            raise UnsupportedRequestError("options of one item do not share their context's tokens")
        # every per-token tensor (ids, mask, token types) cut to the shared tokens; images stay whole
        inputs = {k: v[:, :shared] if isinstance(v, torch.Tensor) and not k.startswith("pixel")
                  and v.shape[:2] == (1, length) else v for k, v in prepared[0][0].items()}
        forget_rope_deltas(self._model)  # the prefill renews them only when it holds images
        out = self._model(**inputs, use_cache=True, logits_to_keep=1)  # only the last position's logits
        cache, last = returned_cache(out), out.logits[0, -1].float()
        rests = [ids[shared:] for _, ids, _ in prepared]
        width = max(len(rest) for rest in rests)
        batch = torch.tensor([rest + rest[-1:] * (width - len(rest)) for rest in rests], device=self._device)
        cache.batch_repeat_interleave(len(rests))
        logits = self._model(input_ids=batch, **{cache_keyword(self._model): cache}, use_cache=True,
                             cache_position=torch.arange(shared, shared + width, device=self._device)).logits
        scored = []
        for row, (_, ids, start) in enumerate(prepared):
            # logits predicting ids[shared], ids[shared + 1], ..., ids[-1]
            predicting = torch.cat([last[None], logits[row, : len(ids) - shared - 1].float()])
            logprobs = torch.log_softmax(predicting[start - shared:], dim=-1)
            scored.append(self._reduce(logprobs, ids[start:], reduction))
        return scored

    @torch.no_grad()
    def continuation_loglikelihood(
        self, context: str, continuation: str, images: list[Image.Image] | None = None, reduction: str = "sum"
    ) -> tuple[float, bool]:
        """Log-probability of ``continuation`` after ``context``, summed over its tokens (or their mean,
        ``reduction="mean"``), and whether greedy decoding would produce exactly it."""
        inputs, ids, start = self._scored_positions(context, continuation, images or [])
        inputs = self._prepared(inputs)
        with self._request(inputs["input_ids"]):
            logits = self._model(**inputs).logits[0].float()
        shift = logits.shape[0] - len(ids)  # token pruning drops positions before the continuation
        logprobs = torch.log_softmax(logits[start - 1 + shift : len(ids) - 1 + shift], dim=-1)
        return self._reduce(logprobs, ids[start:], reduction)

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise UnsupportedRequestError("multi-round generation is not supported by the probe wrapper")
