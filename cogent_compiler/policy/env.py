"""The gymnasium environment the agent learns in: one step per prune group (AMC-style); the cut follows exactly.

An episode draws conditions (``ConditionRanges``; or takes them from
``reset(options={"conditions": ...})``), then asks for one action per prune
group: the fraction of its channels to remove, ``(a + 1) / 2 * max_ratio``.
The observation is the current group's embedding (``space.group_features``:
index, op kind, in/out channels, kernel, stride, MACs, parameters, output
bytes, position), the previous action, the share of MACs still to decide,
and the conditions (bandwidth, RTT, edge load, device speed, accuracy
budget).  A model without prune groups (or without data to check accuracy
against) has a single step whose action is ignored.

The cut is not left to the agent: once the ratios are set, the fastest
candidate cut (edge-only, every single-tensor cut, device-only) for the
pruned model under the episode's conditions is found exactly
(``PlanSpace.best_cut``: one latency estimate per candidate, milliseconds),
which no learned guess can beat.  A first version let the agent pick the cut
position with one more continuous action; TD3 learned to stay on the device
whatever the bandwidth (the candidates between edge-only and device-only are
mostly bad, and the actor's tanh saturated on the safe end).  So the agent
chooses the ratios *for* the cut they make possible, and the two are chosen
together.

The reward comes at the end: minus the plan's predicted latency over the
unpruned device-only latency under the same conditions (so -1.0 is "no
better than running it all on the device"; capped at -4), from the latency
model and ``prune_ir``.  A plan over the accuracy budget (top-1 from the
accuracy oracle: held-out data, a short fine-tune, cached) is *repaired* as
the compile repairs it -- every ratio scaled by one factor found by
bisection (``accuracy.budget.bisect_scale``, ``repair_attempts`` more
measurements at most) -- and earns the repaired plan's reward less
``repair_cost``: the action is constrained into the budget, as AMC
constrains its actions into a FLOPs budget.  A first version penalised
such plans instead (device-only's reward minus ten times the excess drop);
on ResNet-18 most random plans are over budget after a short fine-tune, and
TD3 learned to prune nothing.  ``repair_attempts=0`` keeps that penalty.

A plan *within* the budget is stretched the same way (every ratio scaled
up by one factor, at most to ``max_ratio``; ``stretch_attempts``
measurements, none by default) and earns the stretched plan's reward, with no cost: every
plan the agent is paid for lies near the budget's edge, so its reward
rates the *shape* of the pruning -- which groups to prune more than
others -- as AMC's constrained mode rates a shape scaled to its FLOPs
budget.  Without it the agent had to find the edge itself through a noisy
oracle, and a grid of uniform ratios, which walks right up to that edge,
beat every plan it measured on two of three digits CNNs by 9-17 %
(``benchmarks/policy.py``).  Each stretch costs measurements the agent
could have spent on more episodes, so it is off until measured
(``AgentConfig.stretch_attempts``, ``benchmarks/policy.py --stretch-attempts``).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from cogent_compiler.policy.space import CONDITION_FEATURES, GROUP_FEATURES, ConditionRanges, Conditions, PlanSpace

__all__ = ["OBS_SIZE", "PruneCutEnv"]

#: group features, previous action, MACs left, last-step flag, conditions
OBS_SIZE = GROUP_FEATURES + 3 + CONDITION_FEATURES
#: every feature is scaled to about [-1, 1]; conditions far outside the trained ranges are clipped here
OBS_BOUND = 4.0


class PruneCutEnv(gym.Env[np.ndarray, np.ndarray]):
    """Prune ratios and a cut for one model, under conditions drawn per episode."""

    metadata = {"render_modes": []}

    def __init__(self, space: PlanSpace, ranges: ConditionRanges | None = None, *, penalty: float = 10.0,
                 repair_attempts: int = 3, repair_cost: float = 0.05, stretch_attempts: int = 0, measure_accuracy: bool = True) -> None:
        """``measure_accuracy=False`` skips the accuracy oracle (answering a trained policy: the compile checks accuracy itself)."""
        super().__init__()
        self.space = space
        self.measure_accuracy = measure_accuracy
        self.ranges = ranges or ConditionRanges()
        self.penalty = penalty
        self.repair_attempts = repair_attempts
        self.repair_cost = repair_cost
        self.stretch_attempts = stretch_attempts
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(OBS_SIZE,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self._groups = space.groups
        graph = space.graph
        index = {g.name: i for i, g in enumerate(space.analysis.groups)}
        total = max(graph.total_macs, 1)
        nodes = {n.name: n for n in graph.nodes}
        self._macs = [sum(nodes[n].macs for n in space.analysis.groups[index[g]].nodes if n in nodes) / total for g in self._groups]
        self._rows = [space.features[index[g]] for g in self._groups]
        self.conditions = Conditions()
        self.ratios: dict[str, float] = {}
        self._t = 0
        self._last = 0.0
        self.last_info: dict[str, Any] = {}

    @property
    def steps(self) -> int:
        """Actions per episode: one per prune group (at least one)."""
        return max(len(self._groups), 1)

    def _obs(self) -> np.ndarray:
        done = self._t >= len(self._groups)
        row = np.zeros(GROUP_FEATURES, np.float32) if done else self._rows[self._t]
        left = float(sum(self._macs[self._t:])) if not done else 0.0
        last = 1.0 if self._t >= self.steps - 1 else 0.0
        obs = np.concatenate([row, np.array([self._last, left, last], np.float32), self.conditions.features()])
        return np.clip(obs, -OBS_BOUND, OBS_BOUND).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        given = (options or {}).get("conditions")
        self.conditions = given if isinstance(given, Conditions) else self.ranges.sample(self.np_random)
        self.ratios, self._t, self._last = {}, 0, 0.0
        return self._obs(), {"conditions": self.conditions.to_json()}

    def ratio_of(self, action: float) -> float:
        return float(np.clip((action + 1.0) / 2.0, 0.0, 1.0)) * self.space.max_ratio

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = float(np.asarray(action, dtype=np.float32).reshape(-1)[0])
        if self._t < len(self._groups):
            self.ratios[self._groups[self._t]] = self.ratio_of(a)
        self._t += 1
        self._last = a
        if self._t < self.steps:
            return self._obs(), 0.0, False, False, {}
        c = self.conditions
        device_only = self.space.price({}, tuple(self.space.graph.outputs), c).total_ms
        ok, acc = self.space.feasible(self.ratios, c) if self.measure_accuracy else (True, None)
        shipped: dict[str, float] = dict(self.ratios)
        if not ok and self.repair_attempts > 0:
            # scale 1 is known to fail (the oracle caches it): repair_attempts more measurements at most
            shipped = self.space.repair(self.ratios, c, self.repair_attempts + 1)
        elif ok and self.measure_accuracy and self.stretch_attempts > 0:
            # scale 1 is known to fit (cached): stretch_attempts more measurements at most, towards the budget's edge
            shipped = self.space.repair(self.ratios, c, self.stretch_attempts + 1, stretch=True)
        cut, latency = self.space.best_cut(shipped, c)
        if ok or self.repair_attempts > 0:
            # capped: past 4x device-only every plan is simply bad, and huge rewards only slow the critics down
            reward = -min(latency.total_ms / device_only, 4.0) - (0.0 if ok else self.repair_cost)
        else:
            assert acc is not None and self.space.accuracy is not None
            excess = self.space.accuracy.baseline - acc - c.max_drop
            reward = -1.0 - self.penalty * excess
        self.last_info = {"cut": cut, "ratios": dict(self.ratios), "latency_ms": latency.total_ms, "device_only_ms": device_only,
                          "accuracy": acc, "feasible": ok, "repaired_ratios": shipped}
        return self._obs(), float(reward), True, False, dict(self.last_info)
