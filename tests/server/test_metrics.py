"""The Prometheus text registry."""

from __future__ import annotations

import pytest

from phx.server.metrics import Registry


def test_render_counters_and_gauges() -> None:
    reg = Registry()
    c = reg.counter("phx_things_total", "Things done", ["kind"])
    g = reg.gauge("phx_queue_depth", "Queued items")
    c.inc(kind="a")
    c.inc(2, kind="b")
    c.inc(kind="a")
    g.set(7)
    g.dec(2)
    assert reg.render() == (
        "# HELP phx_queue_depth Queued items\n"
        "# TYPE phx_queue_depth gauge\n"
        "phx_queue_depth 5\n"
        "# HELP phx_things_total Things done\n"
        "# TYPE phx_things_total counter\n"
        'phx_things_total{kind="a"} 2\n'
        'phx_things_total{kind="b"} 2\n'
    )
    assert c.get(kind="a") == 2 and c.get(kind="zzz") == 0


def test_unlabelled_counter_starts_at_zero_and_fractions_render() -> None:
    reg = Registry()
    c = reg.counter("phx_x_total", "x")
    assert "phx_x_total 0\n" in reg.render()
    c.inc(0.5)
    assert "phx_x_total 0.5\n" in reg.render()


def test_label_and_help_escaping() -> None:
    reg = Registry()
    c = reg.counter("phx_e_total", "help with \\ and\nnewline", ["v"])
    c.inc(v='quote" back\\slash\nnl')
    text = reg.render()
    assert "# HELP phx_e_total help with \\\\ and\\nnewline\n" in text
    assert 'phx_e_total{v="quote\\" back\\\\slash\\nnl"} 1\n' in text


def test_gauge_callback() -> None:
    reg = Registry()
    depth = [3]
    reg.gauge("phx_cb", "sampled").set_function(lambda: depth[0])
    assert "phx_cb 3\n" in reg.render()
    depth[0] = 9
    assert "phx_cb 9\n" in reg.render()


def test_misuse_is_rejected() -> None:
    reg = Registry()
    c = reg.counter("phx_a_total", "a", ["x"])
    with pytest.raises(ValueError, match="already registered"):
        reg.gauge("phx_a_total", "again")
    with pytest.raises(ValueError, match="cannot decrease"):
        c.inc(-1, x="1")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc(y="1")
    with pytest.raises(ValueError, match="takes labels"):
        c.inc()
    with pytest.raises(ValueError, match="invalid metric name"):
        reg.counter("bad-name", "")
    with pytest.raises(ValueError, match="invalid label name"):
        reg.counter("phx_b_total", "", ["__reserved"])
    with pytest.raises(ValueError, match="callbacks"):
        reg.gauge("phx_g", "", ["l"]).set_function(lambda: 1.0)
