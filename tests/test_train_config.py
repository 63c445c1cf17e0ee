"""TrainConfig's checks and round trip, the Budget, and the learning-rate schedules."""

import math

import pytest

from charrnn.errors import ConfigError, cli_names
from charrnn.train_config import DEFAULT_MAX_STEPS, Budget, TrainConfig, learning_rate


def test_schedules():
    cfg = TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10, min_lr_frac=0.1, max_steps=100)
    assert learning_rate(cfg, 0, 0.0, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 10, 0.1, 0) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    assert learning_rate(cfg, 99, 1.0, 0) == pytest.approx(0.1)
    wsd = TrainConfig(lr=1.0, schedule="wsd", warmup_steps=0, min_lr_frac=0.1, max_steps=100)
    assert [learning_rate(wsd, 0, p, 0) for p in (0.0, 0.5, 0.8, 0.9, 1.0)] == pytest.approx([1.0, 1.0, 1.0, 0.55, 0.1])
    step = TrainConfig(lr=1.0, schedule="step", warmup_steps=0, lr_decay=0.5, lr_decay_after=2, max_steps=1)
    assert [learning_rate(step, 0, 0, e) for e in range(4)] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "kw",
    [
        dict(batch_size=0),
        dict(val_frac=0.0),
        dict(lr=-1.0),
        dict(schedule="linear"),
        dict(max_time=-5),
        dict(dtype="int8"),
        dict(on_nan="ignore"),
        dict(max_steps=0),
    ],
)
def test_config_rejects_nonsense(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


@pytest.mark.parametrize(
    "kw, python, cli",
    [
        (dict(batch_size=0), "batch_size must be at least 1, got 0", "--batch-size must be at least 1, got 0"),
        (
            dict(schedule="linear"),
            "unknown schedule='linear'; choose one of cosine, wsd, step, constant",
            "unknown --schedule linear; choose one of",
        ),
        (dict(dtype="int8"), "unknown dtype='int8'", "unknown --dtype int8"),
        (dict(max_time=-5), "max_time must be positive", "--max-time must be positive"),
    ],
)
def test_messages_name_options_as_the_caller_spells_them(kw, python, cli):
    with pytest.raises(ConfigError, match=python):
        TrainConfig(**kw)
    with cli_names(), pytest.raises(ConfigError, match=cli):
        TrainConfig(**kw)


def test_an_unset_budget_stays_unset_and_the_budget_applies_the_default():
    cfg = TrainConfig()
    assert cfg.max_steps is None and cfg.to_dict()["max_steps"] is None
    budget = Budget.of(cfg, steps_per_epoch=100)
    assert budget.max_steps == DEFAULT_MAX_STEPS and budget.total_steps == DEFAULT_MAX_STEPS
    assert Budget.of(TrainConfig(max_time=60.0), 100).max_steps is None
    with pytest.raises(ConfigError, match="needs max_steps, max_epochs or max_time"):
        Budget(steps_per_epoch=10)


def test_from_dict_round_trips_and_reads_the_run_facts_checkpoints_carry():
    cfg = TrainConfig(batch_size=3, max_time=5.0, schedule="cosine")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    saved = {**cfg.to_dict(), "device": "cuda:0", "world_size": 2}  # what a checkpoint's train_config holds
    assert TrainConfig.from_dict(saved) == cfg
    assert TrainConfig.from_dict({"lr": 1e-3}) == TrainConfig(lr=1e-3)


def test_from_dict_rejects_unknown_keys_in_one_line():
    with pytest.raises(ConfigError, match=r"^unknown train config key\(s\): bogus, lr_max$"):
        TrainConfig.from_dict({**TrainConfig().to_dict(), "lr_max": 1.0, "bogus": 2})


def test_budget_totals_and_what_a_progress_bar_reads():
    by_steps = Budget(max_steps=100, max_epochs=2, steps_per_epoch=30)
    assert by_steps.total_steps == 60 and by_steps.unit == "step" and by_steps.total == 60
    assert by_steps.position(12, 99.0) == 12
    by_time = Budget(max_time=90.0, steps_per_epoch=30)
    assert by_time.total_steps is None and by_time.unit == "s" and by_time.total == 90.0
    assert by_time.position(12, 45.5) == 45.5


def test_budget_fraction_is_the_largest_share_used():
    b = Budget(max_steps=100, max_time=100.0, steps_per_epoch=10)
    assert b.fraction(0, 0.0) == 0.0
    assert b.fraction(25, 10.0) == 0.25 and b.fraction(10, 50.0) == 0.5
    assert b.fraction(200, 0.0) == 1.0
    b.record_closing(20.0)  # the time the closing evaluation needs is not the loop's to spend
    assert b.fraction(0, 40.0) == pytest.approx(0.5)


def test_budget_reasons_in_order():
    b = Budget(max_steps=10, max_epochs=2, max_time=100.0, steps_per_epoch=4)
    assert b.reason(0, 0.0) is None
    assert b.reason(8, 0.0) == "max_epochs"
    assert b.reason(7, 100.0) == "max_time"
    assert Budget(max_steps=10, max_epochs=5, steps_per_epoch=2).reason(10, 0.0) == "max_steps"


def test_budget_stops_while_one_more_step_and_the_closing_evaluation_still_fit():
    b = Budget(max_time=10.0)
    for seconds in (5.0, 1.0, 1.0):  # the first step (warm-up) does not count towards the mean
        b.record_step(seconds)
    assert b.step_s == 1.0
    assert b.reason(0, 8.5) is None
    b.record_closing(1.0)
    assert b.reason(0, 7.9) is None and b.reason(0, 8.0) == "max_time"
