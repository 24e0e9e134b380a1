"""Regularized evolution of update-rule programs (Real et al. 2019, "Regularized Evolution for
Image Classifier Architecture Search"; Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", who evolve Lion this way with a funnel of ever larger tasks).

The population is a FIFO queue: each generation proposes `batch_size` children, each a mutant of
the winner of a tournament of `tournament_size` random members, evaluates them together (one
`population_losses` call per proxy task, padded to a fixed size so nothing recompiles), appends
them and drops as many of the oldest members. Fitness is the mean over proxy tasks of
`log(tuned loss) - log(reference's tuned loss)`, where a tuned loss is the best over the
learning-rate grid of the mean over seeds of the final validation loss; lower is better and the
reference scores 0. Equivalent programs (`search.canonical`'s structural hash, then behaviour
fingerprint) are evaluated once. A rule whose update does not depend on the learning rate
(`search.learning_rate`) is not trained: tuning its learning rate would choose nothing, so it
scores `IGNORES_LR_FITNESS`, worse than any trained rule, and never enters the hall of fame.
Every `funnel_every` generations, and in `finish`, the best distinct programs are re-evaluated
on the funnel suite; only those that beat or match the reference there are accepted as the
run's best.

The training proxy is the default fitness; a `Scorer` replaces it (and a second one the funnel),
e.g. `search.distill`'s distance to an optimizer's recorded updates: any function from programs
to records holding `fitness` (lower is better) and `penalized`, which the search caches alike.
With a scorer, a rule that ignores its learning rate is scored like any other (a distilled rule
is `lr` times the direction scored).

The state is plain JSON data (programs as `Program.to_json()`, the key as its key data), so a run
can be checkpointed and resumed bit for bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from search.canonical import behaviour_fingerprints, structural_hash
from search.distill import Scorer
from search.encoding import encode_population, encoded_length
from search.interpreter import population_losses
from search.learning_rate import ignores_learning_rate
from search.mutation import (
    KINDS,
    MutationConfig,
    fit_to_limits,
    mutate,
    mutate_many,
    random_program,
    rng_from_key,
)
from search.objective import PENALTY, penalize_nonfinite
from search.program import Program
from search.programs_library import sgd
from search.proxy_validity import spearman, spread_by_fitness
from search.simplify import simplify
from tasks import Task

State = dict[str, Any]
Metrics = dict[str, Any]
TIMING_METRICS = ("eval_seconds", "programs_per_second", "funnel_seconds")
FUNNEL_SEED_OFFSET = 1000
# The fitness of a rule that ignores its learning rate: above any trained rule's, which is at most
# log(PENALTY / loss_floor) (every task diverged).
IGNORES_LR_FITNESS = 1e10


@dataclasses.dataclass(frozen=True)
class Suite:
    """Tasks a program is trained on, each over a learning-rate grid and seeds.

    Attributes:
      names: one label per task (for metrics).
      tasks: the tasks.
      num_steps: training steps of every run.
      learning_rates: the grid the learning rate is tuned over.
      seeds: training seeds; the tuned loss averages over them.
    """

    names: tuple[str, ...]
    tasks: tuple[Task, ...]
    num_steps: int
    learning_rates: tuple[float, ...]
    seeds: tuple[int, ...]

    def __post_init__(self):
        if not self.tasks or len(self.names) != len(self.tasks):
            raise ValueError("a suite needs at least one task and one name per task")
        if not self.learning_rates or not self.seeds or self.num_steps < 1:
            raise ValueError("a suite needs learning rates, seeds and num_steps >= 1")


@dataclasses.dataclass(frozen=True)
class EvolutionConfig:
    """Hyperparameters of the search (sizes are static: they fix the compiled shapes).

    Attributes:
      population_size: members of the FIFO population.
      tournament_size: members sampled per tournament; the fittest is mutated.
      batch_size: children per generation, evaluated together.
      warm_starts: programs the initial population is made of (each once, then mutants).
      warm_start_mutations: mutations applied to each further copy of a warm start (>= 1).
      random_programs: members of the initial population that are random programs.
      reference: fitness is relative to it (default: the first warm start, else SGD).
      restart_after: generations without a better best before the population is reseeded from
        the best so far and the warm starts (0: never).
      funnel_every: generations between funnel evaluations (0: only in `finish`).
      funnel_top_k: distinct best programs re-evaluated on the funnel (and its batch size).
      funnel_tolerance: a program passes if its funnel fitness is at most this.
      loss_floor: losses are floored here before taking logs.
      max_improvement: a task's log-loss ratio counts down to `-max_improvement` at most, so
        that no single task (such as a quadratic solved to 1e-9) dominates the mean.
      lr_window: a program's loss at a grid learning rate is its worst over the `lr_window`
        grid points either side too (`worst_in_window`), and the tuned loss the least of those:
        a rule scores where a range of learning rates works, not at one lucky point (0: the
        plain minimum over the grid). The reference is tuned the same way.
      simplify: prune the accepted program in `finish` (`search.simplify`); the pruned rule
        replaces it if it passes the funnel at least as well.
      mutation: limits and rates of the mutations.
    """

    population_size: int = 32
    tournament_size: int = 4
    batch_size: int = 16
    warm_starts: tuple[Program, ...] = ()
    warm_start_mutations: int = 1
    random_programs: int = 0
    reference: Program | None = None
    restart_after: int = 0
    funnel_every: int = 0
    funnel_top_k: int = 4
    funnel_tolerance: float = 0.0
    loss_floor: float = 1e-6
    max_improvement: float = math.inf
    lr_window: int = 0
    simplify: bool = True
    mutation: MutationConfig = dataclasses.field(default_factory=MutationConfig)

    def __post_init__(self):
        object.__setattr__(self, "warm_starts", tuple(self.warm_starts))
        sizes = {"population_size": (2, 100_000), "tournament_size": (1, self.population_size),
                 "batch_size": (1, self.population_size), "warm_start_mutations": (1, 1000),
                 "random_programs": (0, self.population_size), "restart_after": (0, 10**9),
                 "funnel_every": (0, 10**9), "funnel_top_k": (1, 1000),
                 "lr_window": (0, 1000)}  # fmt: skip
        for name, (low, high) in sizes.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value!r}")
        if not self.warm_starts and self.random_programs < self.population_size:
            raise ValueError("without warm starts, random_programs must fill the population")
        if not (math.isfinite(self.funnel_tolerance) and 0 < self.loss_floor < math.inf):
            raise ValueError("funnel_tolerance must be finite and loss_floor positive")
        if not self.max_improvement > 0:
            raise ValueError(f"max_improvement must be positive, got {self.max_improvement!r}")

    @property
    def reference_program(self) -> Program:
        if self.reference is not None:
            return self.reference
        return self.warm_starts[0] if self.warm_starts else sgd()


class Evolution(NamedTuple):
    """A search as functions of its JSON state: `init(key)`, `step(state)` (one generation),
    `finish(state)` (the final funnel) and `evaluate(state, programs)` (proxy fitness records,
    through the cache); each returns the new state first. `validate(state, suite, num)` scores
    the proxy itself (`search.proxy_validity`) and changes no state."""

    init: Callable[[jax.Array], tuple[State, Metrics]]
    step: Callable[[State], tuple[State, Metrics]]
    finish: Callable[[State], tuple[State, Metrics]]
    evaluate: Callable[[State, Sequence[Program]], tuple[State, list[dict], Metrics]]
    validate: Callable[[State, Suite, int], dict[str, Any]]


def worst_in_window(losses: np.ndarray, half_width: int) -> np.ndarray:
    """`out[..., i] = max(losses[..., i - half_width : i + half_width + 1])` over the last axis
    (a learning-rate grid), the window cut at the grid's ends (edge padding adds no new value)."""
    pad = [(0, 0)] * (losses.ndim - 1) + [(half_width, half_width)]
    padded = np.pad(losses, pad, mode="edge")
    return sliding_window_view(padded, 2 * half_width + 1, axis=-1).max(-1)


def _key_data(key: jax.Array) -> list[int]:
    return [int(x) for x in np.asarray(jax.random.key_data(key)).ravel()]


def _key(data: list[int]) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(data, np.uint32))


def _fingerprint_key(fingerprint: str) -> str:
    """A short cache key for a behaviour fingerprint of any length."""
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:32]


def _pad(programs: list[Program], size: int) -> list[Program]:
    return programs + [programs[0]] * (size - len(programs))


def make_evolution(
    config: EvolutionConfig,
    proxy: Suite | None,
    funnel: Suite | None = None,
    *,
    scorer: Scorer | None = None,
    funnel_scorer: Scorer | None = None,
) -> Evolution:
    """The regularized evolution of `config` on the `proxy` suite, with `funnel` as the funnel
    (default: the proxy suite on other seeds). With a `scorer` instead of a proxy suite, the
    fitness is `scorer(programs)`'s and the funnel's `funnel_scorer`'s (default: the scorer's),
    and the reference's records are kept as they are. Library code: no I/O; metrics are
    returned."""
    if (proxy is None) == (scorer is None):
        raise ValueError("give either a proxy suite or a scorer")
    if scorer is not None:
        funnel_scorer = scorer if funnel_scorer is None else funnel_scorer
    elif funnel is None:
        seeds = tuple(s + FUNNEL_SEED_OFFSET for s in proxy.seeds)
        funnel = dataclasses.replace(proxy, seeds=seeds)
    mconfig = config.mutation
    for start in config.warm_starts:
        if len(start.live_instructions()) > mconfig.max_instructions:
            raise ValueError(
                f"a warm start of {len(start.live_instructions())} instructions exceeds "
                f"max_instructions {mconfig.max_instructions}:\n{start.format()}"
            )
    reference = config.reference_program
    max_len = max(mconfig.max_instructions, encoded_length(reference), 4)
    max_len = -(-max_len // 4) * 4
    num_state = max(mconfig.max_state, reference.num_state)
    B, P, T = config.batch_size, config.population_size, config.tournament_size
    K = config.funnel_top_k

    def tuned_losses(suite: Suite, programs: list[Program], size: int):
        """Tuned loss and best learning-rate index `[len(programs), tasks]`, in calls of `size`
        programs (padded) per task; with `lr_window`, the loss is the window's worst."""
        losses, index = [], []
        lrs, seeds = np.asarray(suite.learning_rates, np.float32), np.asarray(suite.seeds)
        for start in range(0, len(programs), size):
            chunk = programs[start : start + size]
            encoded = encode_population(_pad(chunk, size), max_len, num_state)
            per_task = []
            for task in suite.tasks:
                out = population_losses(task, encoded, lrs, seeds, suite.num_steps)
                mean = np.asarray(out["valid_loss"]).mean(-1)  # the padded shape: no retrace
                per_task.append(np.asarray(penalize_nonfinite(mean), np.float64)[: len(chunk)])
            stacked = worst_in_window(np.stack(per_task, axis=1), config.lr_window)
            losses.append(stacked.min(-1))
            index.append(stacked.argmin(-1))
        return np.concatenate(losses), np.concatenate(index)

    def records(suite: Suite, programs: list[Program], size: int, reference_losses):
        losses, index = tuned_losses(suite, programs, size)
        floor = config.loss_floor
        ref = np.log(np.maximum(np.asarray(reference_losses, np.float64), floor))
        relative = np.log(np.maximum(losses, floor)) - ref
        relative = np.maximum(relative, -config.max_improvement)
        return [
            {"fitness": float(np.mean(rel)), "losses": [float(x) for x in loss],
             "lr_index": [int(i) for i in idx], "penalized": bool(np.any(loss >= PENALTY))}
            for rel, loss, idx in zip(relative, losses, index, strict=True)
        ]  # fmt: skip

    def proxy_records(state: State, programs: list[Program]) -> list[dict]:
        if scorer is not None:
            return scorer(programs)
        return records(proxy, programs, B, state["reference"]["proxy"]["losses"])

    def funnel_records(state: State, programs: list[Program]) -> list[dict]:
        if scorer is not None:
            return funnel_scorer(programs)
        return records(funnel, programs, K, state["reference"]["funnel"]["losses"])

    def evaluate(state: State, programs: Sequence[Program]):
        """Proxy records of `programs` through the cache (structural hash, then behaviour);
        the misses run in chunks of `batch_size`."""
        state = {**state, "cache": dict(state["cache"]), "hashes": dict(state["hashes"])}
        cache, hashes = state["cache"], state["hashes"]
        hash_of = [structural_hash(p) for p in programs]
        keys: list[str | None] = [hashes.get(h) for h in hash_of]
        pending = [i for i, k in enumerate(keys) if k is None]
        for start in range(0, len(pending), B):
            part = pending[start : start + B]
            prints = behaviour_fingerprints([programs[i] for i in part])
            for i, fingerprint in zip(part, prints, strict=True):
                keys[i] = hashes[hash_of[i]] = _fingerprint_key(fingerprint)
        misses: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in cache and k not in misses:
                misses[k] = i
        t0 = time.perf_counter()
        fresh = [programs[i] for i in misses.values()]
        # a scorer's rules become `lr` times a direction (`search.distill.direction_rule`)
        ignored = ignores_learning_rate(fresh) if fresh and scorer is None else [False] * len(fresh)
        trained = [p for p, ignores in zip(fresh, ignored, strict=True) if not ignores]
        new = iter(proxy_records(state, trained) if trained else ())
        cache.update((k, _ignores_lr_record() if ignores else next(new))
                     for k, ignores in zip(misses, ignored, strict=True))  # fmt: skip
        seconds = time.perf_counter() - t0
        out = [cache[k] for k in keys]
        counters = dict(state["counters"])
        counters["evaluated"] += len(misses)
        counters["cache_hits"] += len(programs) - len(misses)
        counters["penalized"] += sum(cache[k]["penalized"] for k in misses)
        counters["ignores_lr"] = counters.get("ignores_lr", 0) + sum(ignored)
        state["counters"] = counters
        stats = {"evaluated": len(misses), "cache_hits": len(programs) - len(misses),
                 "penalized": sum(r["penalized"] for r in out),
                 "ignores_lr": sum(r.get("ignores_lr", False) for r in out),
                 "eval_seconds": seconds,
                 "programs_per_second": len(misses) / seconds if seconds > 0 else 0.0}  # fmt: skip
        return state, out, stats, keys

    def admit(state: State, programs, keys, records_, generation: int) -> State:
        """Add evaluated programs to the hall of fame (top-K distinct by fitness; never a rule
        that ignores its learning rate)."""
        fame = list(state["hall_of_fame"])
        known = {m["key"] for m in fame}
        for program, k, record in zip(programs, keys, records_, strict=True):
            if k not in known and not record.get("ignores_lr", False):
                known.add(k)
                fame.append({"program": program.to_json(), "key": k,
                             "fitness": record["fitness"], "found": generation})  # fmt: skip
        fame.sort(key=lambda m: m["fitness"])  # stable: the first found wins ties
        fame = fame[:K]
        state = {**state, "hall_of_fame": fame}
        if fame and (state["best_fitness"] is None or fame[0]["fitness"] < state["best_fitness"]):
            state["best_fitness"] = fame[0]["fitness"]
            state["last_improvement"] = generation
        return state

    def populate(state: State, programs: list[Program], generation: int):
        state, recs, stats, keys = evaluate(state, programs)
        members = [{"program": p.to_json(), "key": k, "fitness": r["fitness"], "born": generation}
                   for p, k, r in zip(programs, keys, recs, strict=True)]  # fmt: skip
        return admit(state, programs, keys, recs, generation), members, stats

    def seed_population(rng, starts: list[Program], num_random: int) -> list[Program]:
        """Random programs, then each start once (fitted to the limits) and then mutants of
        them; a start over the state limit loses a random slot per copy (`fit_to_limits`)."""
        programs = [random_program(rng, mconfig) for _ in range(num_random)]
        for i in range(P - num_random):
            start = fit_to_limits(rng, starts[i % len(starts)], mconfig)
            if i >= len(starts):
                start = mutate_many(rng, start, mconfig, config.warm_start_mutations)
            programs.append(start)
        return programs

    def run_funnel(state: State, extra: Sequence[dict] = ()) -> tuple[State, Metrics]:
        """Funnel records of the hall of fame (and of `extra` members) not funnelled yet; the
        accepted program is the passing one of best funnel fitness, then proxy fitness."""
        done = state["funnel"]
        todo: list[dict] = []
        for member in [*state["hall_of_fame"], *extra]:
            if member["key"] not in done and all(m["key"] != member["key"] for m in todo):
                todo.append(member)
        t0 = time.perf_counter()
        if todo:
            programs = [Program.from_json(m["program"]) for m in todo]
            new = funnel_records(state, programs)
            done = dict(done)
            for member, record in zip(todo, new, strict=True):
                passed = record["fitness"] <= config.funnel_tolerance
                done[member["key"]] = {**record, "passed": passed, "program": member["program"],
                                       "proxy_fitness": member["fitness"]}  # fmt: skip
        passers = [(r["fitness"], r["proxy_fitness"], k) for k, r in done.items() if r["passed"]]
        accepted = None
        if passers:
            _, _, k = min(passers, key=lambda x: x[:2])  # min() keeps the first on ties
            accepted = _accepted(k, done[k])
        counters = {**state["counters"], "funnel_evaluated": state["counters"]["funnel_evaluated"]
                    + len(todo)}  # fmt: skip
        state = {**state, "funnel": done, "accepted": accepted, "counters": counters}
        return state, {"funnel_evaluated": len(todo), "funnel_seconds": time.perf_counter() - t0}

    def simplify_accepted(state: State) -> tuple[State, Metrics]:
        """Prune the accepted program (`search.simplify`, proxy fitness within 0); the pruned
        rule replaces it if it passes the funnel at least as well."""
        holder = [state]

        def fitness(programs: Sequence[Program]) -> np.ndarray:
            holder[0], recs, _, _ = evaluate(holder[0], list(programs))
            return np.asarray([r["fitness"] for r in recs])

        accepted = state["accepted"]
        pruned = simplify(Program.from_json(accepted["program"]), fitness)
        state, (record,), _, (k,) = evaluate(holder[0], [pruned])
        member = {"program": pruned.to_json(), "key": k, "fitness": record["fitness"]}
        state, metrics = run_funnel(state, [member])
        result = state["funnel"][k]
        if result["passed"] and result["fitness"] <= accepted["funnel_fitness"]:
            state["accepted"] = {**_accepted(k, result), "program": pruned.to_json(),
                                 "fitness": record["fitness"], "simplified": True}  # fmt: skip
        return state, metrics

    def metrics_of(state: State, extra: Metrics) -> Metrics:
        fitness = [m["fitness"] for m in state["population"]]
        accepted = state["accepted"]
        counters = state["counters"]
        return {
            "generation": state["generation"],
            "best_fitness": state["best_fitness"],
            "population_best": float(np.min(fitness)),
            "median_fitness": float(np.median(fitness)),
            "accepted_fitness": None if accepted is None else accepted["fitness"],
            "accepted_funnel_fitness": None if accepted is None else accepted["funnel_fitness"],
            "cache_size": len(state["cache"]),
            "total_cache_hit_rate": counters["cache_hits"] / max(1, counters["proposed"]),
            **extra,
        }

    def init(key: jax.Array) -> tuple[State, Metrics]:
        key, init_key = jax.random.split(key)
        rng = rng_from_key(init_key)
        state: State = {
            "generation": 0, "key": _key_data(key), "population": [], "cache": {},
            "hashes": {}, "hall_of_fame": [], "funnel": {}, "accepted": None,
            "best_fitness": None, "last_improvement": 0,
            "counters": {"proposed": 0, "rejected": 0, "evaluated": 0, "cache_hits": 0,
                         "penalized": 0, "ignores_lr": 0, "restarts": 0, "funnel_evaluated": 0},
        }  # fmt: skip
        if scorer is not None:
            state["reference"] = {"program": reference.to_json(),
                                  "proxy": scorer([reference])[0],
                                  "funnel": funnel_scorer([reference])[0]}  # fmt: skip
        else:
            proxy_ref, _ = tuned_losses(proxy, [reference], B)
            funnel_ref, _ = tuned_losses(funnel, [reference], K)
            state["reference"] = {
                "program": reference.to_json(),
                "proxy": {"losses": [float(x) for x in proxy_ref[0]]},
                "funnel": {"losses": [float(x) for x in funnel_ref[0]]},
            }
        programs = seed_population(rng, list(config.warm_starts), config.random_programs)
        state["counters"]["proposed"] = len(programs)
        state, members, stats = populate(state, programs, 0)
        state["population"] = members
        metrics = {"invalid_rate": 0.0, "cache_hit_rate": stats["cache_hits"] / len(programs),
                   "restart": 0, **stats}  # fmt: skip
        if config.funnel_every:
            state, funnel_metrics = run_funnel(state)
            metrics.update(funnel_metrics)
        return state, metrics_of(state, metrics)

    def step(state: State) -> tuple[State, Metrics]:
        generation = state["generation"] + 1
        key, gen_key, restart_key = jax.random.split(_key(state["key"]), 3)
        population = state["population"]
        fitness = np.asarray([m["fitness"] for m in population])
        children, kinds, rejected = [], dict.fromkeys(KINDS + ("none",), 0), 0
        for child_key in np.asarray(jax.random.key_data(jax.random.split(gen_key, B))):
            rng = rng_from_key(child_key)
            entrants = rng.choice(len(population), T, replace=False)
            winner = entrants[np.argmin(fitness[entrants])]
            parent = Program.from_json(population[winner]["program"])
            mutation = mutate(rng, parent, mconfig)
            children.append(mutation.program)
            kinds[mutation.kind] += 1
            rejected += mutation.rejected
        counters = dict(state["counters"])
        counters["proposed"] += B
        counters["rejected"] += rejected
        state = {**state, "generation": generation, "key": _key_data(key), "counters": counters}
        state, members, stats = populate(state, children, generation)
        state["population"] = population[B:] + members
        restart = bool(config.restart_after) and (
            generation - state["last_improvement"] >= config.restart_after
        )
        if restart:
            starts = [Program.from_json(m["program"]) for m in state["hall_of_fame"][:1]]
            starts += config.warm_starts
            programs = seed_population(rng_from_key(restart_key), starts, 0)
            state["counters"] = {**state["counters"],
                                 "proposed": state["counters"]["proposed"] + len(programs),
                                 "restarts": state["counters"]["restarts"] + 1}  # fmt: skip
            state, restart_members, restart_stats = populate(state, programs, generation)
            state["population"] = restart_members
            state["last_improvement"] = generation
            for name in ("evaluated", "penalized", "ignores_lr", "eval_seconds"):
                stats[name] += restart_stats[name]
        metrics = {
            "invalid_rate": rejected / (rejected + B),
            "cache_hit_rate": stats["cache_hits"] / B,
            "restart": int(restart),
            **stats,
            **{f"mutation/{k}": v for k, v in kinds.items()},
        }
        if stats["eval_seconds"] > 0:
            metrics["programs_per_second"] = stats["evaluated"] / stats["eval_seconds"]
        if config.funnel_every and generation % config.funnel_every == 0:
            state, funnel_metrics = run_funnel(state)
            metrics.update(funnel_metrics)
        return state, metrics_of(state, metrics)

    def finish(state: State) -> tuple[State, Metrics]:
        state, funnel_metrics = run_funnel(state)
        if config.simplify and state["accepted"] is not None:
            state, more = simplify_accepted(state)
            funnel_metrics["funnel_evaluated"] += more["funnel_evaluated"]
            funnel_metrics["funnel_seconds"] += more["funnel_seconds"]
        return state, metrics_of(state, funnel_metrics)

    def evaluate_programs(state: State, programs: Sequence[Program]):
        state, recs, stats, _ = evaluate(state, list(programs))
        return state, recs, stats

    def validate(state: State, suite: Suite, num_programs: int) -> dict[str, Any]:
        """Spearman's rho between proxy fitness and fitness on `suite` (the same log ratio to
        the reference, tuned on `suite`'s grid) over at most `num_programs` distinct members of
        the final population spread over its fitness range; rules that ignore the learning
        rate or diverged on the proxy are left out. Also rho per task of `suite`."""
        if scorer is not None:
            raise ValueError("the proxy's validity is measured for the training proxy only")
        distinct: dict[str, dict] = {}
        for member in state["population"]:
            record = state["cache"][member["key"]]
            if not (record.get("ignores_lr", False) or record["penalized"]):
                distinct.setdefault(member["key"], member)
        members = list(distinct.values())
        members = [members[i] for i in spread_by_fitness([m["fitness"] for m in members],
                                                         num_programs)]  # fmt: skip
        reference_losses, _ = tuned_losses(suite, [reference], B)
        programs = [Program.from_json(m["program"]) for m in members]
        new = records(suite, programs, B, reference_losses[0]) if programs else []
        floor = config.loss_floor
        proxy_fitness = [m["fitness"] for m in members]
        per_task = np.log(np.maximum([r["losses"] for r in new], floor)).reshape(
            len(new), len(suite.tasks)
        ) - np.log(np.maximum(reference_losses[0], floor))
        return {
            "tasks": list(suite.names),
            "steps": suite.num_steps,
            "programs": len(members),
            "spearman": _finite_or_none(spearman(proxy_fitness, [r["fitness"] for r in new])),
            "spearman_per_task": {name: _finite_or_none(spearman(proxy_fitness, per_task[:, j]))
                                  for j, name in enumerate(suite.names)},
            "reference_losses": [float(x) for x in reference_losses[0]],
            "members": [{"key": m["key"], "proxy_fitness": m["fitness"],
                         "fitness": r["fitness"], "losses": r["losses"]}
                        for m, r in zip(members, new, strict=True)],
        }  # fmt: skip

    return Evolution(init, step, finish, evaluate_programs, validate)


def _accepted(key: str, record: dict) -> dict:
    """The `accepted` entry of the state for a funnel record."""
    return {"program": record["program"], "key": key, "fitness": record["proxy_fitness"],
            "funnel_fitness": record["fitness"], "funnel_losses": record.get("losses"),
            "funnel_lr_index": record.get("lr_index"), "simplified": False}  # fmt: skip


def _finite_or_none(x: float) -> float | None:
    """`x`, or None when it is NaN (JSON state and rule metadata hold finite numbers only)."""
    return float(x) if math.isfinite(x) else None


def _ignores_lr_record() -> dict:
    """The proxy record of a rule that ignores its learning rate (not trained)."""
    return {"fitness": IGNORES_LR_FITNESS, "losses": [], "lr_index": [], "penalized": False,
            "ignores_lr": True}  # fmt: skip


def best_program(state: State) -> tuple[Program, bool]:
    """The run's best program and whether it passed the funnel (else: the best by proxy
    fitness); ValueError if every rule evaluated ignores its learning rate."""
    if state["accepted"] is not None:
        return Program.from_json(state["accepted"]["program"]), True
    if not state["hall_of_fame"]:
        raise ValueError("every rule the search evaluated ignores its learning rate")
    return Program.from_json(state["hall_of_fame"][0]["program"]), False
