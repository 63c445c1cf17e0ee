"""charrnn.visualize, charrnn.features, charrnn.recording, charrnn.colours and charrnn.html_report:
recording, features, correlations, the colour scales, the HTML page."""

from __future__ import annotations

import base64
import json
import random
import re
import warnings
from html.parser import HTMLParser

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from charrnn import colours, html_report, recording
from charrnn import features as feats
from charrnn import visualize as viz
from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError, cli_names
from charrnn.model import CharRNN, ModelConfig

TEXT = 'int f(x) {\n\tif (a[i] == "}") /* no */ return "q";  // c\n}\n'


def tiny_model(cell: str, vocab_size: int, layers: int = 2, hidden: int = 8, seed: int = 0) -> CharRNN:
    torch.manual_seed(seed)
    return CharRNN(ModelConfig(vocab_size, cell=cell, num_layers=layers, hidden_size=hidden, embedding_size=5)).eval()


# -- recording ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_recorded_states_and_predictions_match_the_fused_modules(cell):
    vocab = Vocab.from_text(TEXT)
    model = tiny_model(cell, len(vocab))
    ids = viz.encode_text(vocab, TEXT, "test")
    whats = ["h", "c"] if cell == "lstm" else ["h"]
    probes = {(layer, what): viz.UnitProbe(layer, what, list(range(8))) for layer in range(2) for what in whats}
    predictions = viz.PredictionProbe(k=5)
    # uint8 ids, as Vocab.encode gives them; chunks of 7 put chunk boundaries inside the text.
    viz.run(model, ids.astype(np.uint8), [*probes.values(), predictions], chunk_chars=7)

    x = torch.as_tensor(ids)[None]
    with torch.no_grad():
        for t in range(len(ids)):
            _, state = model(x[:, : t + 1])  # state after reading text[t]: (layers, 1, H) per tensor
            for layer in range(2):
                h = probes[layer, "h"].values[t]
                torch.testing.assert_close(torch.as_tensor(h), state[0][layer, 0], atol=1e-5, rtol=1e-4)
                if cell == "lstm":
                    c = probes[layer, "c"].values[t]
                    torch.testing.assert_close(torch.as_tensor(c), state[1][layer, 0].tanh(), atol=1e-5, rtol=1e-4)
        logits, _ = model(x)
    probs = torch.softmax(logits[0, :-1], dim=1)
    result = predictions.result
    assert np.isnan(result.prob[0]) and (result.top_ids[0] == -1).all()
    expected = probs.gather(1, x[0, 1:, None])[:, 0].numpy()
    np.testing.assert_allclose(result.prob[1:], expected, atol=1e-5)
    np.testing.assert_array_equal(result.top_ids[1:, 0], probs.argmax(dim=1).numpy())
    np.testing.assert_allclose(result.bits[1:], -np.log2(expected), rtol=1e-4)


def test_lstm_gates_are_recorded_and_obey_the_cell_update():
    vocab = Vocab.from_text(TEXT)
    model = tiny_model("lstm", len(vocab), layers=1)
    ids = viz.encode_text(vocab, TEXT, "test")
    units = list(range(8))
    p = {w: viz.UnitProbe(0, w, units) for w in ("gate:input", "gate:forget", "gate:g", "gate:output", "h")}
    viz.run(model, ids, p.values())
    i, f, g, o = (p[f"gate:{n}"].values for n in ("input", "forget", "g", "output"))
    c = np.zeros(8)
    for t in range(len(ids)):
        c = f[t] * c + i[t] * g[t]
    np.testing.assert_allclose(p["h"].values[-1], o[-1] * np.tanh(c), atol=1e-5)
    for gate in (i, f, o):
        assert gate.min() >= 0 and gate.max() <= 1
    assert g.min() < 0 < g.max()  # the candidate gate is a tanh: it takes both signs


def test_gate_saturation_counts_each_unit():
    vocab = Vocab.from_text(TEXT)
    model = tiny_model("gru", len(vocab))
    ids = viz.encode_text(vocab, TEXT, "test")
    gates = viz.GateProbe(model.config)
    update = viz.UnitProbe(1, "gate:update", list(range(8)))
    viz.run(model, ids, [gates, update], chunk_chars=10)
    stats = {(s.layer, s.gate): s for s in gates.result}
    assert set(stats) == {(layer, gate) for layer in (0, 1) for gate in ("reset", "update")}
    z = update.values
    np.testing.assert_allclose(stats[1, "update"].left, (z < 0.1).mean(axis=0))
    np.testing.assert_allclose(stats[1, "update"].right, (z > 0.9).mean(axis=0))
    with pytest.raises(ConfigError, match="^gates needs an LSTM or GRU"):
        viz.GateProbe(ModelConfig(10, cell="rnn"))


# -- features ----------------------------------------------------------------------------------


def as_ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


def test_quote_feature():
    assert as_ints(feats.quote_feature('a"bc"d"')) == [0, 1, 1, 1, 0, 0, 1]


def test_line_position_feature():
    assert as_ints(feats.line_position_feature("ab\ncd\n\ne")) == [1, 2, 0, 1, 2, 0, 0, 1]


def test_bracket_depth_feature_never_goes_negative():
    assert as_ints(feats.bracket_depth_feature("(a[b]{c})) (")) == [1, 1, 2, 2, 1, 2, 2, 1, 0, 0, 0, 1]


def test_indent_feature():
    assert as_ints(feats.indent_feature("a\n  b c\n\tx\n")) == [0, 0, 1, 2, 2, 2, 2, 0, 1, 1, 0]


def test_word_position_feature():
    assert as_ints(feats.word_position_feature("ab c_1, d")) == [1, 2, 0, 1, 2, 3, 0, 0, 1]


@pytest.mark.parametrize(
    "text, marks",
    [
        ("a /* b */ c", "00011111100"),
        ("x // y\nz", "00011100"),
        ('s = "/* no */"; // y', "00000000000000000111"),
        ("'\"' /* c */", "00000111111"),
        ("a/*/ b */c", "0011111110"),
        ("a /**/ //", "000111001"),
    ],
)
def test_c_comment_feature(text, marks):
    assert "".join(str(v) for v in as_ints(feats.comment_feature(text))) == marks


def test_latex_comment_feature_when_the_text_is_latex():
    text = "\\begin{a} 50\\% % note\nx"
    expected = [0] * len("\\begin{a} 50\\% ") + [1] * len("% note") + [0, 0]
    assert as_ints(feats.comment_feature(text)) == expected
    # Without LaTeX markers "%" is C's modulo, not a comment.
    assert as_ints(feats.comment_feature("a % b")) == [0] * 5


def test_regex_feature_marks_every_character_of_each_match():
    assert as_ints(feats.feature_values("regex:[0-9]+", "a12 b3")) == [0, 1, 1, 0, 0, 1]


def test_feature_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown find feature 'nope'; choose one of quote, line-position"):
        feats.feature_values("nope", "abc")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        feats.feature_values("regex:(", "abc")
    with pytest.raises(ConfigError, match="needs a pattern"):
        feats.feature_values("regex:", "abc")
    with pytest.raises(DataError, match="^find='quote': the feature is 0 at every character"):
        feats.feature_values("quote", "no quotes here")
    # Inside the command line the same messages name the flags.
    with cli_names(), pytest.raises(ConfigError, match="unknown --find feature 'nope'"):
        feats.feature_values("nope", "abc")
    needs_pattern = r"^--find regex: needs a pattern after the colon, e.g. --find regex:\[0-9\]\+$"
    with cli_names(), pytest.raises(ConfigError, match=needs_pattern):
        feats.feature_values("regex:", "abc")


def test_option_checks_name_the_valid_range():
    cfg = ModelConfig(10, num_layers=2, hidden_size=16)
    assert viz.check_layer(cfg, 2) == 1
    assert viz.check_units(cfg, [0, 15]) == [0, 15]
    with pytest.raises(ConfigError, match="^layer=3: this model has 2 layer"):
        viz.check_layer(cfg, 3)
    with pytest.raises(ConfigError, match="^layer=0"):
        viz.check_layer(cfg, 0)
    with pytest.raises(ConfigError, match="^unit=16: each layer has 16 units; pass a number from 0 to 15$"):
        viz.check_units(cfg, [0, 16])
    with cli_names(), pytest.raises(ConfigError, match="^--unit 16: each layer has 16 units"):
        viz.check_units(cfg, [16])
    with pytest.raises(ConfigError, match="^what='c' is not recorded for a GRU; choose one of h, gate:reset"):
        viz.check_quantity("gru", "c")
    vocab = Vocab("abc")
    with pytest.raises(DataError, match="empty"):
        viz.encode_text(vocab, "", "x.txt")
    with pytest.raises(DataError, match="x.txt: 1 character.* 'z'"):
        viz.encode_text(vocab, "abz", "x.txt")


def test_the_lstm_candidate_gate_is_g_and_lives_in_minus_one_to_one():
    assert "gate:g" in viz.QUANTITIES["lstm"] and "gate:cell" not in viz.QUANTITIES["lstm"]
    with pytest.raises(ConfigError, match="^what='gate:cell' is not recorded for an LSTM; choose one of .*gate:g"):
        viz.check_quantity("lstm", "gate:cell")  # the old name lives on only as a CLI alias
    assert viz.describe_quantity("gate:g") == "g (candidate) gate"
    assert viz.describe_quantity("gate:forget") == "forget gate" and viz.describe_quantity("c") == "tanh(c)"
    assert viz.value_range("gate:g") == (-1.0, 1.0) and viz.value_range("gate:candidate") == (-1.0, 1.0)
    assert viz.value_range("gate:forget") == (0.0, 1.0) and viz.value_range("gate:update") == (0.0, 1.0)


# -- a whole recording -------------------------------------------------------------------------


def test_record_holds_the_asked_for_and_the_found_units_as_the_probes_record_them():
    vocab = Vocab.from_text(TEXT)
    model = tiny_model("gru", len(vocab))
    rec = recording.record(
        model,
        vocab,
        TEXT + TEXT,
        units=[3, 1],
        layer=1,
        find="bracket-depth",
        top=3,
        gates=True,
        max_chars=len(TEXT),
        source="t.c",
        checkpoint="x/best.pt",
    )
    assert rec.text == TEXT and rec.source_n_chars == 2 * len(TEXT) and rec.what == "h"
    ids = viz.encode_text(vocab, TEXT, "t")
    everything = viz.UnitProbe(0, "h", list(range(8)))
    corr = viz.CorrelationProbe(feats.feature_values("bracket-depth", TEXT), "h", [0], 8)
    viz.run(model, ids, [everything, corr])
    assert [(t.layer, t.unit, t.r) for t in rec.units] == [(0, 3, None), (0, 1, None)]
    np.testing.assert_allclose(rec.units[0].values, everything.values[:, 3], atol=1e-6)
    expected = viz.rank_units(corr.r, [0], top=3)
    assert [(t.layer, t.unit) for t in rec.found] == [(s.layer, s.unit) for s in expected]
    for trace, score in zip(rec.found, expected):
        assert trace.r == pytest.approx(score.r, abs=1e-6)
        np.testing.assert_allclose(trace.values, everything.values[:, score.unit], atol=1e-6)
    assert [(g.layer, g.gate) for g in rec.gates] == [(0, "reset"), (0, "update"), (1, "reset"), (1, "update")]
    assert rec.mean_bits == pytest.approx(float(np.mean(rec.predictions.bits[1:])))

    data = recording.to_json(rec)
    assert (data["n_chars"], data["source_n_chars"], data["checkpoint"]) == (len(TEXT), 2 * len(TEXT), "x/best.pt")
    assert [(u["layer"], u["unit"]) for u in data["units"]] == [(1, 3), (1, 1)] + [(1, s.unit) for s in expected]
    assert [r["unit"] for r in data["find"]["ranking"]] == [s.unit for s in expected]
    assert "cell" not in data["units"][0] and "chars" not in data  # the old keys are gone
    page = recording.to_html(rec)
    assert page.count("<option") == 2 + 3 + 2  # the two units, three found, the feature, surprisal
    assert "layer 1, unit 3, h" in page and "<title>charrnn visualize: best.pt</title>" in page


def test_record_checks_its_options_like_the_command_does():
    vocab = Vocab.from_text(TEXT)
    model = tiny_model("rnn", len(vocab))
    with pytest.raises(ConfigError, match="^unit=8"):
        recording.record(model, vocab, TEXT, units=[8])
    with pytest.raises(ConfigError, match="^gates needs an LSTM or GRU"):
        recording.record(model, vocab, TEXT, gates=True)
    with pytest.raises(DataError, match="^t.c: 1 character"):
        recording.record(model, vocab, TEXT + "€", source="t.c")


def test_colour_scales_put_values_where_the_legend_says():
    np.testing.assert_allclose(colours.scale_values(np.array([0.0, 0.5, 1.0]), 0, 1), [-1, 0, 1])
    np.testing.assert_allclose(colours.scale_values(np.array([2.0, 4.0]), 2, 4, "sequential"), [0, 1])
    positions = colours.surprisal_positions(np.array([np.nan, 0.0, colours.SURPRISAL_MAX_BITS]))
    assert np.isnan(positions[0]) and list(positions[1:]) == [0.0, 1.0]


# -- correlations ------------------------------------------------------------------------------


class FakeChunk:
    """Stands in for viz.Chunk: given (T, H) values per layer."""

    def __init__(self, start: int, values: list[np.ndarray]):
        self.start, self._values = start, values

    def __len__(self) -> int:
        return len(self._values[0])

    def quantity(self, layer: int, what: str) -> torch.Tensor:
        return torch.as_tensor(self._values[layer], dtype=torch.float32)


def test_streamed_correlation_equals_corrcoef_and_constant_units_give_zero():
    rng = np.random.default_rng(0)
    n, hidden = 300, 5
    y = rng.normal(size=n) + 100.0  # an offset that would hurt naive sums
    x = rng.normal(size=(2, n, hidden)).astype(np.float32)
    x[0, :, 1] = y.astype(np.float32) * 0.5 + x[0, :, 1] * 0.1  # strongly correlated
    x[1, :, 2] = 0.75  # constant unit
    probe = viz.CorrelationProbe(y, "h", [0, 1], hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warnings
        for start in range(0, n, 64):
            probe.update(FakeChunk(start, [x[0, start : start + 64], x[1, start : start + 64]]))
        r = probe.r
    assert np.isfinite(r).all()
    for layer in range(2):
        for unit in range(hidden):
            expected = 0.0 if (layer, unit) == (1, 2) else np.corrcoef(x[layer, :, unit], y)[0, 1]
            assert r[layer, unit] == pytest.approx(expected, abs=1e-5)
    ranking = viz.rank_units(r, [0, 1], top=3)
    assert (ranking[0].layer, ranking[0].unit) == (0, 1) and ranking[0].r > 0.9
    assert abs(ranking[0].r) >= abs(ranking[1].r) >= abs(ranking[2].r)


def test_rank_units_breaks_ties_by_layer_then_unit_and_keeps_the_sign():
    r = np.array([[0.5, -0.9, 0.0], [0.9, 0.1, -0.5]])
    assert [(s.layer, s.unit, s.r) for s in viz.rank_units(r, [2, 3], top=4)] == [
        (2, 1, -0.9),
        (3, 0, 0.9),
        (2, 0, 0.5),
        (3, 2, -0.5),
    ]


# -- a planted signal: a tiny LSTM must learn to track quotes, and --find must find it ------------


def quote_corpus(n: int, seed: int) -> str:
    """Words of a-e outside quotes and of A-E inside them: only the quote state says which comes next."""
    rng = random.Random(seed)
    parts, inside, size = [], False, 0
    while size < n:
        if rng.random() < 0.25:
            word, inside = '"', not inside
        else:
            word = "".join(rng.choice("ABCDE" if inside else "abcde") for _ in range(rng.randint(1, 5)))
        parts.append(word + " ")
        size += len(word) + 1
    return "".join(parts)


@pytest.fixture(scope="module")
def quote_model():
    """A 1-layer, 12-unit LSTM trained for ~2 s on quote_corpus; (model, vocab, held-out text)."""
    text = quote_corpus(20_000, seed=0)
    vocab = Vocab.from_text(text)
    ids = torch.as_tensor(vocab.encode(text).astype(np.int64))
    model = tiny_model("lstm", len(vocab), layers=1, hidden=12).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    batch, seq = 32, 64
    stream = (len(ids) - 1) // batch
    x, y = ids[: batch * stream].view(batch, stream), ids[1 : batch * stream + 1].view(batch, stream)
    state = None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 12-unit model gains nothing from more, and the CI box is shared
    try:
        for step in range(80):
            j = (step * seq) % (stream - seq)
            if j < seq:
                state = None
            logits, state = model(x[:, j : j + seq], state)
            state = tuple(s.detach() for s in state)
            loss = F.cross_entropy(logits.reshape(-1, len(vocab)), y[:, j : j + seq].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), vocab, quote_corpus(3_000, seed=1)


@pytest.mark.slow  # its fixture trains a model
def test_find_ranks_a_quote_tracking_unit_first(quote_model):
    model, vocab, text = quote_model
    ids = viz.encode_text(vocab, text, "held-out")
    quote = viz.CorrelationProbe(feats.feature_values("quote", text), "c", [0], 12)
    shuffled = np.random.default_rng(0).permutation(feats.quote_feature(text))
    chance = viz.CorrelationProbe(shuffled, "c", [0], 12)
    viz.run(model, ids, [quote, chance])
    best = viz.rank_units(quote.r, [0], top=1)[0]
    assert abs(best.r) > 0.8, f"no quote unit found: best {best}"
    assert np.abs(chance.r).max() < 0.2, "a shuffled feature should correlate with nothing"

    # The found unit really does switch at the quotes: its mean differs inside and outside.
    unit = viz.UnitProbe(0, "c", [best.unit])
    viz.run(model, ids, [unit])
    inside = feats.quote_feature(text) == 1
    values = unit.values[:, 0]
    assert np.sign(values[inside].mean() - values[~inside].mean()) == np.sign(best.r)


# -- the HTML page -----------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collects the spans inside #text, the <option>s and the JSON data."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.spans: list[str] = []
        self.options: list[str] = []
        self.data = ""
        self.external: list[str] = []
        self._in_text = self._in_data = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("id") == "text":
            self._in_text = True
        elif tag == "span" and self._in_text:
            self.spans.append("")
        elif tag == "option":
            self.options.append(attrs.get("value"))
        elif tag == "script" and attrs.get("id") == "data":
            self._in_data = True
        for name in ("src", "href"):
            if name in attrs:
                self.external.append(attrs[name])
        if tag == "link":
            self.external.append(str(attrs))

    def handle_endtag(self, tag):
        if tag == "div" and self._in_text:
            self._in_text = False
        if tag == "script":
            self._in_data = False

    def handle_data(self, data):
        if self._in_text and self.spans:
            self.spans[-1] += data
        if self._in_data:
            self.data += data


def fake_predictions(n: int, vocab_size: int, seed: int = 0) -> viz.Predictions:
    rng = np.random.default_rng(seed)
    top = rng.integers(0, vocab_size, size=(n, 5))
    probs = np.sort(rng.dirichlet(np.ones(8), size=n)[:, :5], axis=1)[:, ::-1].astype(np.float32)
    prob = rng.uniform(0.001, 1, size=n).astype(np.float32)
    prob[0], top[0], probs[0] = np.nan, -1, np.nan
    return viz.Predictions(prob, top, probs)


def test_page_has_one_span_per_character_and_no_external_resources():
    text = 'a<b>&"c"\n\td é\r'
    vocab = "".join(sorted(set(text)))
    values = np.linspace(-1, 1, len(text))
    views = [html_report.View("L1 #0 h", "layer 1, unit 0, h", values), html_report.View("L1 #1 h", "unit 1", -values)]
    page = html_report.render_page(
        text,
        title="t <x>",
        meta=["m & n"],
        views=views,
        vocab=vocab,
        predictions=fake_predictions(len(text), len(vocab)),
        find=("quote", [(viz.UnitScore(0, 0, 0.5), 0)]),
        gates=[viz.GateSaturation(0, "input", np.array([0.1, 0.5]), np.array([0.2, 0.3]))],
    )
    parser = PageParser()
    parser.feed(page)
    assert len(parser.spans) == len(text)
    assert parser.spans == [html_report.glyph(ch) for ch in text]
    assert parser.spans[text.index("\n")] == "↵\n" and parser.spans[text.index("\t")] == "→\t"
    assert parser.options == ["0", "1"]
    assert parser.external == []
    assert not re.search(r"https?://(?!www\.w3\.org)", page)
    data = json.loads(parser.data)
    q = np.frombuffer(base64.b64decode(data["views"][0]["q"]), dtype=np.int8)
    np.testing.assert_array_equal(q, np.round(values * 127).astype(np.int8))
    bits = np.frombuffer(base64.b64decode(data["pred"]["bits"]), dtype=np.uint8)
    assert bits[0] == 255 and len(bits) == len(text)
    assert "<svg" in page and "layer 1" in page


def test_page_stays_small_for_20k_characters():
    n = 20_000
    text = (quote_corpus(n, seed=3) * 2)[:n]
    vocab = "".join(sorted(set(text)))
    rng = np.random.default_rng(0)
    views = [html_report.View(f"u{i}", f"unit {i}", rng.uniform(-1, 1, n)) for i in range(3)]
    page = html_report.render_page(
        text, title="big", meta=[], views=views, vocab=vocab, predictions=fake_predictions(n, len(vocab))
    )
    size = len(page.encode("utf-8"))
    # ~14 bytes of markup + ~15 of predictions + ~1.3 per view and character.
    assert size < 36 * n, f"{size / n:.1f} bytes per character"
    parser = PageParser()
    parser.feed(page)
    assert len(parser.spans) == n


def test_colour_maps():
    assert colours.colour("diverging", -1) == (33, 102, 172)
    assert colours.colour("diverging", 0) == (247, 247, 247)
    assert colours.colour("diverging", 5) == (178, 24, 43)  # clipped
    assert colours.colour("sequential", 0) == (247, 247, 247)
    assert colours.text_colour((33, 102, 172)) == (255, 255, 255)
    assert colours.text_colour((247, 247, 247)) == (0, 0, 0)
