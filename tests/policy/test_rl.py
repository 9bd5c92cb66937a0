"""The learned policy: a valid gymnasium environment, a TD3 agent that learns, a policy file that loads without pickle."""

from __future__ import annotations

import dataclasses
import tempfile
import zipfile

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from torch import nn

from cogent_compiler.accuracy import finetune, load_data
from cogent_compiler.accuracy.budget import bisect_scale, within_budget
from cogent_compiler.cost import ComputeModel
from cogent_compiler.errors import PlanError
from cogent_compiler.frontend import from_module, trace
from cogent_compiler.passes import FoldBatchNorm, prune_groups_of
from cogent_compiler.passes.prune_groups import PruneAnalysis
from cogent_compiler.policy.env import PruneCutEnv
from cogent_compiler.policy.rl import AgentConfig, LearnedPolicy, _neighbours, measured_plans, polish, train_policy
from cogent_compiler.policy.space import AccuracyOracle, ConditionRanges, Conditions, PlanSpace


@pytest.fixture(scope="module")
def digits_space():
    """A small CNN trained on digits, its prune groups, an accuracy oracle, and a slow device beside a fast edge."""
    data = load_data("digits", (1, 1, 16, 16), 10)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 16, 10))
    finetune(model, data, steps=150)
    graph = FoldBatchNorm()(trace(from_module(model.eval(), (torch.from_numpy(data.x_val[:1]),), name="digits_cnn")))
    oracle = AccuracyOracle(graph, data, finetune_steps=0, val_samples=200)
    space = PlanSpace(graph, prune_groups_of(graph), ComputeModel("device", 0.05), ComputeModel("edge", 50.0), oracle)
    space.data = data  # type: ignore[attr-defined]  # for the test that builds a fine-tuning oracle of its own
    return space


def test_the_environment_passes_gymnasiums_checker(digits_space):
    env = PruneCutEnv(digits_space)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=0, options={"conditions": Conditions(bandwidth_mbps=5.0)})
    assert obs.shape == env.observation_space.shape and info["conditions"]["bandwidth_mbps"] == 5.0
    steps, done = 0, False
    while not done:
        obs, reward, done, _, info = env.step(np.array([0.0], np.float32))
        steps += 1
    assert steps == len(digits_space.groups) == 2  # one per prune group; the cut follows exactly
    assert reward < 0 and info["ratios"] == {g: pytest.approx(0.35) for g in digits_space.groups}
    assert info["latency_ms"] == pytest.approx(-reward * info["device_only_ms"]) or not info["feasible"]
    # the plan priced is the one that ships: the ratios asked for scaled by one factor, up within the budget, down when over it
    shipped = info["repaired_ratios"]
    k = shipped[digits_space.groups[0]] / info["ratios"][digits_space.groups[0]]
    assert shipped == {g: pytest.approx(min(r * k, digits_space.max_ratio)) for g, r in info["ratios"].items()}
    assert (k >= 1.0) == info["feasible"]
    cut, best = digits_space.best_cut(info["repaired_ratios"], Conditions(bandwidth_mbps=5.0))
    assert info["cut"] == cut and info["latency_ms"] == pytest.approx(best.total_ms)


def test_an_over_budget_plan_is_repaired_as_the_compile_repairs_it_at_a_cost(digits_space):
    c = Conditions(max_drop=0.0)
    env = PruneCutEnv(digits_space)
    env.reset(options={"conditions": c})
    for _ in digits_space.groups:  # prune 70 % of every group, no fine-tuning: accuracy falls
        _, reward, _, _, info = env.step(np.array([1.0], np.float32))
    assert not info["feasible"] and info["accuracy"] < digits_space.accuracy.baseline
    repaired = info["repaired_ratios"]
    assert all(repaired.get(g, 0.0) < r for g, r in info["ratios"].items()) and digits_space.feasible(repaired, c)[0]
    cut, best = digits_space.best_cut(repaired, c)
    assert info["cut"] == cut and reward == pytest.approx(-min(best.total_ms / info["device_only_ms"], 4.0) - env.repair_cost)
    # without repairs, the penalty: worse than running the unpruned model on the device
    env = PruneCutEnv(digits_space, repair_attempts=0)
    env.reset(options={"conditions": c})
    for _ in digits_space.groups:
        _, reward, _, _, info = env.step(np.array([1.0], np.float32))
    assert not info["feasible"] and reward < -1.0


def test_a_plan_within_the_budget_is_stretched_to_its_edge_and_paid_for_that(digits_space):
    a, b = digits_space.groups
    half = {a: 0.35, b: 0.35}
    drop = {k: digits_space.accuracy.baseline - digits_space.accuracy({a: k, b: k}) for k in (0.35, 0.7)}
    for max_drop in (1.0, drop[0.35]):  # everything fits; the plan asked for fits and (maybe) no more
        c = Conditions(max_drop=max_drop)
        env = PruneCutEnv(digits_space, stretch_attempts=2)
        env.reset(options={"conditions": c})
        for _ in digits_space.groups:
            _, reward, _, _, info = env.step(np.array([0.0], np.float32))
        assert info["feasible"] and info["ratios"] == pytest.approx(half)
        shipped = info["repaired_ratios"]
        assert shipped[a] == shipped[b] and digits_space.feasible(shipped, c)[0]
        if drop[0.7] <= max_drop:
            assert shipped[a] == pytest.approx(digits_space.max_ratio)  # the whole way: max_ratio fits
        else:
            assert 0.35 <= shipped[a] < 0.7
        cut, best = digits_space.best_cut(shipped, c)
        assert info["cut"] == cut and reward == pytest.approx(-min(best.total_ms / info["device_only_ms"], 4.0))
    # no stretching asked for (the default): the plan as it was
    env = PruneCutEnv(digits_space)
    env.reset(options={"conditions": Conditions(max_drop=1.0)})
    for _ in digits_space.groups:
        _, _, _, _, info = env.step(np.array([0.0], np.float32))
    assert info["repaired_ratios"] == info["ratios"]


def test_training_stretches_plans_when_configured(tmp_path, digits_space):
    """With a budget every plan fits, each episode's plan is stretched until its largest ratio is the bound."""
    oracle = AccuracyOracle(digits_space.graph, digits_space.data, finetune_steps=0, val_samples=100)
    space = dataclasses.replace(digits_space, accuracy=oracle)
    ranges = ConditionRanges(max_drop=(1.0, 1.0))
    train_policy(space, AgentConfig(timesteps=20, learning_starts=20, stretch_attempts=2), tmp_path / "p.zip", ranges=ranges)
    plans = [dict(k) for k in oracle.cache if k]
    tops = [p for p in plans if max(p.values()) == pytest.approx(space.max_ratio)]
    assert len(tops) >= 5 and len(plans) <= 2 * len(tops)  # per episode: the plan asked for, then its stretch to the bound


def test_polish_spends_its_measurements_on_plans_nearer_the_budgets_edge(digits_space):
    oracle = AccuracyOracle(digits_space.graph, digits_space.data, finetune_steps=0, val_samples=200)
    space = dataclasses.replace(digits_space, accuracy=oracle)
    a, b = space.groups
    max_drop = oracle.baseline - oracle({a: 0.5, b: 0.5})
    small, skewed = {a: 0.1, b: 0.1}, {a: 0.05, b: 0.2}
    for plan in (small, skewed):
        assert space.feasible(plan, Conditions(max_drop=max_drop))[0], "both plans should be within a budget of uniform 0.5"
    assert polish(space, max_drop, 0) == {}
    measured = [p for p, _ in measured_plans(space, max_drop)]  # uniform 0.5 among them
    before = oracle.evaluations
    polished = polish(space, max_drop, 6)
    assert 0 < oracle.evaluations - before <= 6
    device_only = tuple(space.graph.outputs)

    def price(plan):
        return space.price(plan, device_only, Conditions()).total_ms

    after = [p for p, _ in measured_plans(space, max_drop)]
    # the fastest plan measured within the budget, new ones included, and no slower than any measured before
    assert dict(oracle.key(polished)) in after and space.feasible(polished, Conditions(max_drop=max_drop))[0]
    assert price(polished) == min(price(p) for p in after) <= min(price(p) for p in measured)


class _Landscape(AccuracyOracle):
    """An accuracy oracle whose answers are a rule, not a fine-tune: pruning group ``a`` past 0.3 loses 5 points, ``b`` nothing."""

    def __init__(self, a: str) -> None:
        self.a, self.grid, self.baseline, self.cache, self.evaluations = a, 0.05, 0.9, {(): 0.9}, 0

    def __call__(self, ratios):
        key = self.key(ratios)
        if key not in self.cache:
            self.evaluations += 1
            self.cache[key] = self.baseline - (0.05 if dict(key).get(self.a, 0.0) > 0.3 + 1e-9 else 0.0)
        return self.cache[key]


def test_polish_climbs_the_group_that_costs_no_accuracy_and_not_the_one_that_does(digits_space):
    a, b = digits_space.groups
    space = dataclasses.replace(digits_space, accuracy=_Landscape(a))
    space.feasible({a: 0.1, b: 0.1}, Conditions(max_drop=0.01))  # what training measured
    best = polish(space, 0.01, 20)
    assert space.accuracy.evaluations <= 21
    assert best[b] >= 0.5 and best.get(a, 0.0) <= 0.3, best
    device_only = tuple(space.graph.outputs)
    assert space.price(best, device_only, Conditions()).total_ms < space.price({a: 0.1, b: 0.1}, device_only, Conditions()).total_ms


def test_a_plans_neighbours_prune_one_group_more_and_maybe_another_less_and_are_new(digits_space):
    a, b = digits_space.groups
    space = dataclasses.replace(digits_space, accuracy=_Landscape(a))
    plan = {a: 0.3, b: 0.65}
    space.feasible({a: 0.35, b: 0.65}, Conditions(max_drop=0.01))
    near = _neighbours(space, plan, np.random.default_rng(0))
    assert near and {a: 0.35, b: 0.65} not in near
    for p in near:
        up = [g for g in (a, b) if p.get(g, 0.0) > plan[g] + 1e-9]
        assert len(up) == 1 and p[up[0]] - plan[up[0]] <= 0.2 + 1e-9 and p[up[0]] <= space.max_ratio
        assert all(plan[g] - p.get(g, 0.0) <= 0.1 + 1e-9 for g in (a, b))
        assert dict(space.accuracy.key(p)) == p  # on the oracle's grid
    assert any(p.get(a, 0.0) < 0.3 for p in near)  # some trade a step of one group for another


def test_a_stretch_whose_largest_ratio_is_at_the_bound_grows_the_rest(digits_space):
    """Scaling a plan whose largest ratio is already ``max_ratio`` changes nothing: the stretch then grows the smaller ones."""
    a, b = digits_space.groups
    top = digits_space.max_ratio
    assert digits_space.repair({a: top, b: 0.1}, Conditions(max_drop=1.0), 3, stretch=True) == {a: top, b: pytest.approx(top)}
    half = digits_space.repair({a: 0.1, b: 0.2}, Conditions(max_drop=1.0), 3, stretch=True)
    assert half == {a: pytest.approx(top / 2), b: pytest.approx(top)}
    # within a budget the plan asked for only just fits, the stretch keeps it, or grows it and still fits
    c = Conditions(max_drop=digits_space.accuracy.baseline - digits_space.accuracy({a: top, b: 0.1}))
    grown = digits_space.repair({a: top, b: 0.1}, c, 4, stretch=True)
    assert grown[a] == top and grown[b] >= 0.1 and digits_space.feasible(grown, c)[0]


def _cut_only_space() -> PlanSpace:
    """No data: nothing may be pruned, the policy chooses only the cut (device much slower than edge)."""
    from cogent_compiler.frontend import from_module as fm

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 32 * 32, 10)).eval()
    graph = FoldBatchNorm()(trace(fm(model, (torch.rand(1, 3, 32, 32),), name="cut_only")))
    return PlanSpace(graph, PruneAnalysis(()), ComputeModel("device", 0.2), ComputeModel("edge", 100.0), None, transfer_dtype="float32")


def test_td3_learns_to_prune_where_it_pays(digits_space, tmp_path):
    """Over a 0.1-0.3 Mbit/s link even the input is slow to send: the agent learns to prune and run on the device."""
    oracle = AccuracyOracle(digits_space.graph, digits_space.data, finetune_steps=10, val_samples=200)
    space = PlanSpace(digits_space.graph, digits_space.analysis, digits_space.device, digits_space.edge, oracle)
    ranges = ConditionRanges(bandwidth_mbps=(0.1, 0.3), rtt_ms=(1.0, 1.0), edge_load=(1.0, 1.0), device_scale=(1.0, 1.0))
    policy = train_policy(space, AgentConfig(timesteps=600, learning_starts=100, seed=0), tmp_path / "policy.zip", ranges=ranges,
                          checkpoint_every=200)
    loaded = LearnedPolicy.load(tmp_path / "policy.zip")
    c = Conditions(bandwidth_mbps=0.2, rtt_ms=1.0)
    ratios, cut, info = loaded.answer(space, c)
    _, unpruned = space.best_cut({}, c)
    # what ships: the answer, repaired into the budget as the compile repairs it (the agent learned with the same repair)
    scale = bisect_scale(lambda k: space.feasible({g: r * k for g, r in ratios.items()}, c)[0], 4)
    assert scale is not None and scale >= 0.5
    shipped = {g: r * scale for g, r in ratios.items()}
    ok, acc = space.feasible(shipped, c)
    assert ok and oracle.baseline - acc <= c.max_drop
    _, best = space.best_cut(shipped, c)
    assert best.total_ms < 0.6 * unpruned.total_ms, (ratios, scale, best.total_ms, unpruned.total_ms)
    assert info["answer_ms"] < 100
    assert loaded.weights[0][0].shape == policy.weights[0][0].shape and loaded.info["timesteps"] == 600
    assert 0 < loaded.info["accuracy_evaluations"] <= 600


def test_the_answer_is_the_faster_of_the_rollout_and_the_plans_measured_within_the_budget(digits_space, tmp_path):
    space = digits_space
    a, b = space.groups
    for ratios in ({a: 0.1}, {a: 0.2}, {a: 0.2, b: 0.1}, {b: 0.5}, {a: 0.7, b: 0.7}):
        space.accuracy(ratios)
    drops = {k: space.accuracy.baseline - acc for k, acc in space.accuracy.cache.items() if k}
    plans = measured_plans(space, 0.01)
    kept = {tuple(sorted(r.items())) for r, _ in plans}
    assert kept and all(d <= 0.01 for _, d in plans)
    for key, drop in drops.items():
        # a measured plan within the budget is kept unless another prunes every group as much and loses no more
        if drop <= 0.01 and key not in kept:
            assert any(d <= drop and all(dict(k2).get(g, 0) >= r for g, r in key) for k2, d in drops.items() if k2 != key and d <= 0.01)
    assert (((a, 0.1),) not in kept) or drops.get(((a, 0.2),), 1.0) > drops[((a, 0.1),)]  # {a: 0.2} prunes more: it wins unless it loses more
    policy = train_policy(space, AgentConfig(timesteps=40, learning_starts=40), tmp_path / "p.zip")
    loaded = LearnedPolicy.load(tmp_path / "p.zip")
    assert loaded.plans == policy.plans
    # training measures more plans: each kept before is kept still, or beaten by one that prunes every group as much and loses no more
    assert all((r, d) in policy.plans or any(d2 <= d and all(r2.get(g, 0.0) >= x for g, x in r.items()) for r2, d2 in policy.plans)
               for r, d in plans)
    c = Conditions(bandwidth_mbps=0.5)
    ratios, cut, info = loaded.answer(space, c)
    priced = [space.best_cut(r, c)[1].total_ms for r, d in loaded.plans if within_budget(d, c.max_drop)] + [info["rollout"]["latency_ms"]]
    assert info["latency_ms"] == pytest.approx(min(priced)) and space.best_cut(ratios, c)[0] == cut
    assert info["source"] == ("rollout" if info["latency_ms"] == info["rollout"]["latency_ms"] else "measured plan")
    # a budget no measured plan fits leaves the rollout, unless a plan it prunes more than was over the budget
    _, _, strict = loaded.answer(space, Conditions(bandwidth_mbps=0.5, max_drop=-1.0))
    if strict["rollout"]["over_budget"]:
        assert strict["source"] == "unpruned" and strict["ratios"] == {}
    else:
        assert strict["source"] == "rollout" and strict["ratios"] == strict["rollout"]["ratios"]
    # the plans over the budget travel in the file: the least pruned of them
    assert loaded.over == policy.over and all(d > 0.01 for _, d in loaded.over)
    assert not any(p is not q and all(p.get(g, 0.0) >= r for g, r in q.items()) for p, _ in loaded.over for q, _ in loaded.over)
    # a rollout that prunes every group at least as much as a plan measured over the budget is not answered
    nothing_fits = dataclasses.replace(loaded, over=(({a: 0.0, b: 0.0}, 1.0),))
    ratios, cut, info = nothing_fits.answer(space, c)
    fits = [space.best_cut(r, c)[1].total_ms for r, d in loaded.plans if within_budget(d, c.max_drop)] + [space.best_cut({}, c)[1].total_ms]
    assert info["rollout"]["over_budget"] and info["source"] in ("measured plan", "unpruned") and info["latency_ms"] == pytest.approx(min(fits))


def test_the_warm_up_explores_plans_that_prune_every_group_alike(tmp_path, digits_space):
    """With every warm-up episode uniform, each plan the oracle measured (and each repair of one) prunes both groups alike."""

    def measured(share: float) -> list[dict[str, float]]:
        oracle = AccuracyOracle(digits_space.graph, digits_space.data, finetune_steps=0, val_samples=200)
        space = dataclasses.replace(digits_space, accuracy=oracle)
        # no polish: its climb measures neighbours of the best plan, which prune the groups differently by design
        train_policy(space, AgentConfig(timesteps=40, learning_starts=40, uniform_warmup=share, polish_attempts=0), tmp_path / f"p{share}.zip")
        return [dict(k) for k in oracle.cache if k]

    uniform = measured(1.0)
    assert len(uniform) >= 5 and all(len(p) == 2 and len(set(p.values())) == 1 for p in uniform)
    assert len({next(iter(p.values())) for p in uniform}) >= 5  # a ratio drawn per episode
    mixed = measured(0.0)  # stable-baselines3's own warm-up: a random action per step
    assert sum(len(set(p.values())) > 1 for p in mixed) >= len(mixed) // 2


def test_correlated_exploration_noise_drifts_along_an_episode_and_restarts_with_the_next():
    """``noise_correlation`` makes neighbouring groups' noise alike, each step's spread still ``noise_sigma``; 0 is SB3's own."""
    from stable_baselines3.common.noise import NormalActionNoise

    from cogent_compiler.policy.rl import _noise

    assert isinstance(_noise(AgentConfig(noise_correlation=0.0)), NormalActionNoise)
    np.random.seed(0)
    noise = _noise(AgentConfig(noise_sigma=0.4, noise_correlation=0.9))
    episodes = []
    for _ in range(400):
        noise.reset()
        episodes.append([float(noise()[0]) for _ in range(12)])
    x = np.array(episodes)
    assert np.std(x[:, 0]) == pytest.approx(0.4, rel=0.15) and np.std(x[:, -1]) == pytest.approx(0.4, rel=0.15)
    assert np.corrcoef(x[:, 5], x[:, 6])[0, 1] > 0.8  # neighbours alike
    assert abs(np.corrcoef(x[:-1, -1], x[1:, 0])[0, 1]) < 0.15  # an episode's first step does not continue the last one's


def test_training_resumes_from_its_checkpoint(tmp_path, digits_space, monkeypatch):
    space = _cut_only_space()
    cfg = AgentConfig(timesteps=300, learning_starts=50)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    train_policy(space, cfg, tmp_path / "p.zip", checkpoint_every=100)
    assert list(scratch.iterdir()) == []  # training leaves nothing in the temporary folder (no SB3-<date> log folders)
    steps = []
    train_policy(space, AgentConfig(timesteps=300, learning_starts=50), tmp_path / "p.zip", checkpoint_every=100,
                 callback=lambda step, _: steps.append(step) or True)
    assert steps == []  # already done: nothing to train again
    assert LearnedPolicy.load(tmp_path / "p.zip").info["timesteps"] == 300


def test_a_policy_file_is_data_and_checked(tmp_path, digits_space):
    space = _cut_only_space()
    policy = train_policy(space, AgentConfig(timesteps=100, learning_starts=50), tmp_path / "p.zip")
    with zipfile.ZipFile(tmp_path / "p.zip") as z:
        assert sorted(z.namelist()) == ["actor.npz", "policy.json"]
    with pytest.raises(PlanError, match="trained for 'cut_only' with 0 prune groups"):
        policy.answer(digits_space, Conditions())
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(PlanError, match="not a policy written by this cogentc"):
        LearnedPolicy.load(tmp_path / "bad.zip")


def test_cogentc_plans_and_compiles_with_a_policy(tmp_path, monkeypatch, capsys):
    import json

    from cogent_compiler.cli import main

    monkeypatch.setenv("COGENT_POLICIES", str(tmp_path / "policies"))
    common = ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--planner", "rl", "--data", "digits",
              "--device-gmacs", "0.05", "--edge-gmacs", "50", "-q"]
    assert main(["plan", *common, "--rl-steps", "100", "--bandwidth", "1mbit", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    (trained,) = (tmp_path / "policies").glob("tiny_cnn-*.zip")
    assert first["chosen"]["name"] == "rl" and first["policy"]["policy"] == str(trained)
    assert set(first["baselines"]) == {"device_only", "edge_only", "single_cut"}
    # a trained policy answers new conditions without training
    assert main(["plan", *common, "--policy", str(trained), "--bandwidth", "7mbit", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["policy"]["answer_ms"] < 100 and again["policy"]["conditions"]["bandwidth_mbps"] == 7.0
    assert main([*common, "--policy", str(trained), "--bandwidth", "7mbit", "--backend", "tvm", "--no-tunedb",
                 "--finetune-steps", "10", "-o", str(tmp_path / "out")]) == 0
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["chosen"]["name"] == "rl" and plan["policy"]["policy"] == str(trained)
    assert plan["conditions"] and "rl: learned policy" in (tmp_path / "out" / "report.html").read_text()


@pytest.mark.parametrize("method", ["uniform", "random", "optuna"])
def test_search_baselines_spend_their_budget_and_never_lose_to_partitioning_alone(digits_space, method):
    from cogent_compiler.policy.search import SEARCHERS

    c = Conditions(bandwidth_mbps=0.2, rtt_ms=1.0, max_drop=0.05)
    result = SEARCHERS[method](digits_space, c, 12, 0)
    _, unpruned = digits_space.best_cut({}, c)
    assert result.evaluations == 12 and result.latency_ms <= unpruned.total_ms
    ok, acc = digits_space.feasible(result.ratios, c)
    assert ok and acc == result.accuracy
    assert result.latency_ms == pytest.approx(digits_space.price(result.ratios, result.cut, c).total_ms)
    assert result.to_json()["evaluations"] == 12


def test_the_default_planner_is_the_policy_and_without_data_it_chooses_the_cut_exactly(tmp_path, capsys):
    import json

    from cogent_compiler.cli import main

    common = ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--device-gmacs", "0.05", "--edge-gmacs", "50", "--bandwidth", "1mbit"]
    assert main(["plan", *common, "--json"]) == 0
    default = json.loads(capsys.readouterr().out)
    assert "policy" not in default  # nothing was trained: there are no ratios to learn without data
    assert main(["plan", *common, "--planner", "single-cut", "--json", "-q"]) == 0
    exact = json.loads(capsys.readouterr().out)
    assert default["chosen"]["cut"] == exact["chosen"]["cut"] and default["chosen"]["predicted"] == exact["chosen"]["predicted"]
    assert main(["plan", *common]) == 0
    assert "rl: no --data to measure accuracy on, so nothing is pruned; the cut alone is chosen, exactly" in capsys.readouterr().err


def test_fixed_ratios_leave_the_joint_planners_only_the_cut(digits_space):
    from cogent_compiler.backends import resolve_target
    from cogent_compiler.driver import CompileOptions, joint_stage

    said = []
    for planner in ("rl", "optuna"):
        options = CompileOptions(planner=planner, prune=0.5, data="digits")
        assert joint_stage(digits_space.graph, options, None, resolve_target("llvm"), resolve_target("llvm"),
                           lambda stage, msg: said.append(msg)) is None
    assert said == [f"{p}: the prune ratios are fixed (--prune / --prune-ratios); the cut alone is chosen, exactly (single-cut planner)"
                    for p in ("rl", "optuna")]


def test_the_optuna_planner_prunes_and_cuts_and_the_compile_holds_it_to_the_budget(tmp_path, digits_space):
    import json

    from cogent_compiler.driver import CompileOptions, compile

    out = tmp_path / "out"
    options = CompileOptions(planner="optuna", search_budget=6, max_accuracy_drop=0.05, device_gmacs=0.05, edge_gmacs=50,
                             bandwidth_bps=1e6, backend="tvm", use_tunedb=False, finetune_steps=10, stretch=False)
    compile(digits_space.graph, out, options, progress=lambda stage, msg: None, data=digits_space.data)
    plan = json.loads((out / "plan.json").read_text())
    search = plan["policy"]["search"]
    assert plan["chosen"]["name"] == "optuna" and search["evaluations"] == 6
    assert plan["chosen"]["cut"] == search["cut"] and any(r > 0 for r in search["ratios"].values())
    # the bundle ships the ratios the search found (--no-stretch), measured against the budget after fine-tuning
    assert plan["accuracy"]["status"] == "accepted" and plan["accuracy"]["ratios"] == pytest.approx(search["ratios"], abs=1e-3)
    assert plan["accuracy"]["drop"] <= 0.05
    assert "optuna: TPE over prune ratios and the cut" in (out / "report.html").read_text()


def test_the_final_check_stretches_the_planners_ratios_and_the_cut_follows(tmp_path, digits_space):
    """By default the compile's own check (the full fine-tune) pushes the chosen ratios towards --max-prune-ratio while they
    fit, and the cut is chosen again for the model that ships."""
    import json

    from cogent_compiler.backends import resolve_target
    from cogent_compiler.driver import CompileOptions, compile, latency_model_for
    from cogent_compiler.policy import plan_single_cut

    out = tmp_path / "out"
    options = CompileOptions(planner="optuna", search_budget=6, max_accuracy_drop=1.0, max_prune_ratio=0.8, device_gmacs=0.05,
                             edge_gmacs=50, bandwidth_bps=1e6, backend="tvm", use_tunedb=False, finetune_steps=10)
    said = []
    result = compile(digits_space.graph, out, options, progress=lambda stage, msg: said.append(msg), data=digits_space.data)
    plan = json.loads((out / "plan.json").read_text())
    asked, shipped = plan["policy"]["search"]["ratios"], plan["accuracy"]["ratios"]
    # a budget of 100 points: everything fits, so the ratios grow by one factor, each to 0.8 at most
    assert plan["accuracy"]["status"] == "stretched" and [a["scale"] for a in plan["accuracy"]["attempts"]][0] == 1.0
    k = max(plan["accuracy"]["attempts"], key=lambda a: a["scale"] if a["drop"] <= 1.0 else 0)["scale"]
    assert k > 1.0 and shipped == pytest.approx({g: min(r * k, 0.8) for g, r in asked.items() if r > 0}, abs=2e-3)  # asked: rounded
    assert result.graph.total_macs < plan["accuracy"]["attempts"][0]["macs"]  # fewer MACs than the ratios asked for
    lat = latency_model_for(resolve_target("llvm"), resolve_target("llvm"), options)
    assert plan["chosen"]["cut"] == list(plan_single_cut(result.graph, lat).chosen.cut)
    assert any("the cut is chosen again" in m for m in said)


def test_the_ratio_bound_and_the_candidates_fine_tune_are_options(tmp_path, monkeypatch, capsys):
    import json

    from cogent_compiler.cli import main

    monkeypatch.setenv("COGENT_POLICIES", str(tmp_path / "policies"))
    common = ["tiny_models:tiny_cnn", "--input-shape", "1,3,16,16", "--planner", "rl", "--data", "digits",
              "--device-gmacs", "0.05", "--edge-gmacs", "50", "-q", "--bandwidth", "1mbit"]
    assert main(["plan", *common, "--rl-steps", "60", "--max-prune-ratio", "0.3", "--search-finetune-steps", "0", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["chosen"]["prune_ratios"] and max(plan["chosen"]["prune_ratios"].values()) <= 0.3 + 1e-9
    (trained,) = (tmp_path / "policies").glob("tiny_cnn-*.zip")
    assert LearnedPolicy.load(trained).max_ratio == 0.3
    for flag, value, words in (("--max-prune-ratio", "1.5", "between 0 and 1"), ("--search-finetune-steps", "-1", "0 or more")):
        assert main(["plan", *common, flag, value]) != 0
        err = capsys.readouterr().err
        assert f"{flag} {value}" in err and words in err and "Traceback" not in err


def test_best_cut_skips_only_cuts_that_cannot_win(digits_space, monkeypatch):
    """The transfer bound leaves best_cut's answer as pricing every candidate gives it, and prices fewer where the link is slow."""
    from cogent_compiler.passes.partition import partition_at

    space = digits_space
    priced = []
    model_cls = type(space.model(Conditions()))
    estimate = model_cls.estimate
    calls: list = []
    counting = lambda self, part: calls.append(part) or estimate(self, part)  # noqa: E731
    for ratios in ({}, {g: 0.3 for g in space.groups}, {space.groups[0]: 0.6}):
        for bw, rtt, scale in ((0.5, 20.0, 1.0), (5.0, 10.0, 1.0), (100.0, 1.0, 0.5), (1000.0, 0.5, 4.0)):
            c = Conditions(bandwidth_mbps=bw, rtt_ms=rtt, device_scale=scale)
            model, graph = space.model(c), space.pruned(ratios)
            every = [(cut, model.estimate(partition_at(graph, cut))) for cut in space.cuts]
            want = min(every, key=lambda s: s[1].total_ms)
            calls.clear()
            with monkeypatch.context() as m:
                m.setattr(model_cls, "estimate", counting)
                got = space.best_cut(ratios, c)
            assert got == want
            priced.append((bw, len(calls)))
    assert all(n <= len(space.cuts) for _, n in priced)
    assert any(n < len(space.cuts) for bw, n in priced if bw <= 5.0)  # at a slow link most cuts' transfer alone loses


def test_the_oracle_never_fine_tunes_the_model_itself(digits_space):
    """A plan whose ratios remove no channel (rounded to 8) is the unpruned model: measured as it is, not fine-tuned in place."""
    from cogent_compiler.passes.prune_channels import kept_channels

    data = digits_space.data
    oracle = AccuracyOracle(digits_space.graph, data, finetune_steps=5, val_samples=200)
    module = digits_space.graph.module
    weights = {k: v.clone() for k, v in module.state_dict().items()}
    a = digits_space.groups[0]
    assert kept_channels(32, 0.1) == 32
    assert oracle({a: 0.1}) == oracle.baseline
    assert all(torch.equal(v, weights[k]) for k, v in module.state_dict().items())
