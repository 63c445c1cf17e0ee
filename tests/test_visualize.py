"""charrnn.visualize and charrnn.html_report: recording, features, correlations, the HTML page."""

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

from charrnn import html_report
from charrnn import visualize as viz
from charrnn.data import Vocab
from charrnn.errors import ConfigError, DataError
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
    probes = {(layer, what): viz.CellProbe(layer, what, list(range(8))) for layer in range(2) for what in whats}
    predictions = viz.PredictionProbe(k=5)
    # uint8 ids, as Vocab.encode gives them; chunks of 7 put chunk boundaries inside the text.
    viz.run(model, ids.astype(np.uint8), [*probes.values(), predictions], chunk_size=7)

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
    cells = list(range(8))
    p = {w: viz.CellProbe(0, w, cells) for w in ("gate:input", "gate:forget", "gate:cell", "gate:output", "h")}
    viz.run(model, ids, p.values())
    i, f, g, o = (p[f"gate:{n}"].values for n in ("input", "forget", "cell", "output"))
    c = np.zeros(8)
    for t in range(len(ids)):
        c = f[t] * c + i[t] * g[t]
    np.testing.assert_allclose(p["h"].values[-1], o[-1] * np.tanh(c), atol=1e-5)
    for gate in (i, f, o):
        assert gate.min() >= 0 and gate.max() <= 1


def test_gate_saturation_counts_each_unit():
    vocab = Vocab.from_text(TEXT)
    model = tiny_model("gru", len(vocab))
    ids = viz.encode_text(vocab, TEXT, "test")
    gates = viz.GateProbe(model.config)
    update = viz.CellProbe(1, "gate:update", list(range(8)))
    viz.run(model, ids, [gates, update], chunk_size=10)
    stats = {(s.layer, s.gate): s for s in gates.result}
    assert set(stats) == {(layer, gate) for layer in (0, 1) for gate in ("reset", "update")}
    z = update.values
    np.testing.assert_allclose(stats[1, "update"].left, (z < 0.1).mean(axis=0))
    np.testing.assert_allclose(stats[1, "update"].right, (z > 0.9).mean(axis=0))
    with pytest.raises(ConfigError, match="--gates needs an LSTM or GRU"):
        viz.GateProbe(ModelConfig(10, cell="rnn"))


# -- features ----------------------------------------------------------------------------------


def as_ints(values: np.ndarray) -> list[int]:
    return [int(v) for v in values]


def test_quote_feature():
    assert as_ints(viz.quote_feature('a"bc"d"')) == [0, 1, 1, 1, 0, 0, 1]


def test_line_position_feature():
    assert as_ints(viz.line_position_feature("ab\ncd\n\ne")) == [1, 2, 0, 1, 2, 0, 0, 1]


def test_bracket_depth_feature_never_goes_negative():
    assert as_ints(viz.bracket_depth_feature("(a[b]{c})) (")) == [1, 1, 2, 2, 1, 2, 2, 1, 0, 0, 0, 1]


def test_indent_feature():
    assert as_ints(viz.indent_feature("a\n  b c\n\tx\n")) == [0, 0, 1, 2, 2, 2, 2, 0, 1, 1, 0]


def test_word_position_feature():
    assert as_ints(viz.word_position_feature("ab c_1, d")) == [1, 2, 0, 1, 2, 3, 0, 0, 1]


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
    assert "".join(str(v) for v in as_ints(viz.comment_feature(text))) == marks


def test_latex_comment_feature_when_the_text_is_latex():
    text = "\\begin{a} 50\\% % note\nx"
    expected = [0] * len("\\begin{a} 50\\% ") + [1] * len("% note") + [0, 0]
    assert as_ints(viz.comment_feature(text)) == expected
    # Without LaTeX markers "%" is C's modulo, not a comment.
    assert as_ints(viz.comment_feature("a % b")) == [0] * 5


def test_regex_feature_marks_every_character_of_each_match():
    assert as_ints(viz.feature_values("regex:[0-9]+", "a12 b3")) == [0, 1, 1, 0, 0, 1]


def test_feature_errors_say_what_to_do():
    with pytest.raises(ConfigError, match="unknown --find feature 'nope'; choose one of quote, line-position"):
        viz.feature_values("nope", "abc")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        viz.feature_values("regex:(", "abc")
    with pytest.raises(ConfigError, match="needs a pattern"):
        viz.feature_values("regex:", "abc")
    with pytest.raises(DataError, match="the feature is 0 at every character"):
        viz.feature_values("quote", "no quotes here")


def test_option_checks_name_the_valid_range():
    cfg = ModelConfig(10, num_layers=2, hidden_size=16)
    assert viz.check_layer(cfg, 2) == 1
    with pytest.raises(ConfigError, match="--layer 3: this model has 2 layer"):
        viz.check_layer(cfg, 3)
    with pytest.raises(ConfigError, match="--layer 0"):
        viz.check_layer(cfg, 0)
    with pytest.raises(ConfigError, match="--cell 16: each layer has 16 cells; pass a number from 0 to 15"):
        viz.check_cells(cfg, [0, 16])
    with pytest.raises(ConfigError, match="choose one of h, gate:reset"):
        viz.check_quantity("gru", "c")
    vocab = Vocab("abc")
    with pytest.raises(DataError, match="empty"):
        viz.encode_text(vocab, "", "x.txt")
    with pytest.raises(DataError, match="x.txt: 1 character.* 'z'"):
        viz.encode_text(vocab, "abz", "x.txt")


# -- correlations ------------------------------------------------------------------------------


class FakeChunk:
    """Stands in for viz.Chunk: given (T, H) values per layer."""

    def __init__(self, start: int, values: list[np.ndarray]):
        self.start, self._values = start, values

    def __len__(self) -> int:
        return len(self._values[0])

    def quantity(self, layer: int, what: str) -> torch.Tensor:
        return torch.as_tensor(self._values[layer], dtype=torch.float32)


def test_streamed_correlation_equals_corrcoef_and_constant_cells_give_zero():
    rng = np.random.default_rng(0)
    n, hidden = 300, 5
    y = rng.normal(size=n) + 100.0  # an offset that would hurt naive sums
    x = rng.normal(size=(2, n, hidden)).astype(np.float32)
    x[0, :, 1] = y.astype(np.float32) * 0.5 + x[0, :, 1] * 0.1  # strongly correlated
    x[1, :, 2] = 0.75  # constant cell
    probe = viz.CorrelationProbe(y, "h", [0, 1], hidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no divide-by-zero or invalid-value warnings
        for start in range(0, n, 64):
            probe.update(FakeChunk(start, [x[0, start : start + 64], x[1, start : start + 64]]))
        r = probe.r
    assert np.isfinite(r).all()
    for layer in range(2):
        for cell in range(hidden):
            expected = 0.0 if (layer, cell) == (1, 2) else np.corrcoef(x[layer, :, cell], y)[0, 1]
            assert r[layer, cell] == pytest.approx(expected, abs=1e-5)
    ranking = viz.rank_cells(r, [0, 1], top=3)
    assert (ranking[0].layer, ranking[0].cell) == (0, 1) and ranking[0].r > 0.9
    assert abs(ranking[0].r) >= abs(ranking[1].r) >= abs(ranking[2].r)


def test_rank_cells_breaks_ties_by_layer_then_cell_and_keeps_the_sign():
    r = np.array([[0.5, -0.9, 0.0], [0.9, 0.1, -0.5]])
    assert [(s.layer, s.cell, s.r) for s in viz.rank_cells(r, [2, 3], top=4)] == [
        (2, 1, -0.9), (3, 0, 0.9), (2, 0, 0.5), (3, 2, -0.5)
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
    """A 1-layer, 12-cell LSTM trained for ~2 s on quote_corpus; (model, vocab, held-out text)."""
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
    torch.set_num_threads(1)  # a 12-cell model gains nothing from more, and the CI box is shared
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


def test_find_ranks_a_quote_tracking_cell_first(quote_model):
    model, vocab, text = quote_model
    ids = viz.encode_text(vocab, text, "held-out")
    quote = viz.CorrelationProbe(viz.feature_values("quote", text), "c", [0], 12)
    shuffled = np.random.default_rng(0).permutation(viz.quote_feature(text))
    chance = viz.CorrelationProbe(shuffled, "c", [0], 12)
    viz.run(model, ids, [quote, chance])
    best = viz.rank_cells(quote.r, [0], top=1)[0]
    assert abs(best.r) > 0.8, f"no quote cell found: best {best}"
    assert np.abs(chance.r).max() < 0.2, "a shuffled feature should correlate with nothing"

    # The found cell really does switch at the quotes: its mean differs inside and outside.
    cell = viz.CellProbe(0, "c", [best.cell])
    viz.run(model, ids, [cell])
    inside = viz.quote_feature(text) == 1
    values = cell.values[:, 0]
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
    views = [html_report.View("L1 #0 h", "layer 1, cell 0, h", values), html_report.View("L1 #1 h", "cell 1", -values)]
    page = html_report.render_page(
        text, title="t <x>", meta=["m & n"], views=views, vocab=vocab, predictions=fake_predictions(len(text), len(vocab)),
        find=("quote", [(viz.CellScore(0, 0, 0.5), 0)]),
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
    views = [html_report.View(f"c{i}", f"cell {i}", rng.uniform(-1, 1, n)) for i in range(3)]
    page = html_report.render_page(text, title="big", meta=[], views=views, vocab=vocab,
                                   predictions=fake_predictions(n, len(vocab)))
    size = len(page.encode("utf-8"))
    # ~14 bytes of markup + ~15 of predictions + ~1.3 per view and character.
    assert size < 36 * n, f"{size / n:.1f} bytes per character"
    parser = PageParser()
    parser.feed(page)
    assert len(parser.spans) == n


def test_colour_maps():
    assert html_report.colour("diverging", -1) == (33, 102, 172)
    assert html_report.colour("diverging", 0) == (247, 247, 247)
    assert html_report.colour("diverging", 5) == (178, 24, 43)  # clipped
    assert html_report.colour("sequential", 0) == (247, 247, 247)
    assert html_report.text_colour((33, 102, 172)) == (255, 255, 255)
    assert html_report.text_colour((247, 247, 247)) == (0, 0, 0)
