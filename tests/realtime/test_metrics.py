"""The Prometheus text rendering, with plain calls."""

import pytest

from realtime.metrics import Registry, ServiceMetrics


def test_counter_and_labels_render_in_text_format():
    r = Registry()
    c = r.counter("x_total", "Things.", ["outcome"])
    c.inc("done")
    c.inc("done")
    c.inc('we"ird')
    text = r.render()
    assert "# TYPE x_total counter" in text
    assert 'x_total{outcome="done"} 2' in text
    assert 'x_total{outcome="we\\"ird"} 1' in text


def test_histogram_buckets_are_cumulative():
    r = Registry()
    h = r.histogram("lat_ms", "Latency.", buckets=(1, 10))
    for v in (0.5, 5, 5, 50):
        h.observe(v)
    text = r.render()
    assert 'lat_ms_bucket{le="1"} 1' in text
    assert 'lat_ms_bucket{le="10"} 3' in text
    assert 'lat_ms_bucket{le="+Inf"} 4' in text
    assert "lat_ms_count 4" in text
    assert "lat_ms_sum 60.5" in text


def test_wrong_label_count_and_negative_increment_are_refused():
    r = Registry()
    c = r.counter("y_total", "Y.", ["a"])
    with pytest.raises(ValueError):
        c.inc()
    with pytest.raises(ValueError):
        c.inc("a", amount=-1)
    with pytest.raises(ValueError):
        r.counter("y_total", "again")


def test_service_metrics_render_every_family():
    m = ServiceMetrics()
    m.sessions_active.add(1)
    m.responses_total.inc("cancelled", "interrupted")
    text = m.render()
    for family in (
        "realtime_sessions_active",
        "realtime_responses_total",
        "realtime_time_to_first_token_ms",
        "realtime_gateway_errors_total",
    ):
        assert f"# TYPE {family}" in text
    assert 'realtime_responses_total{outcome="cancelled",reason="interrupted"} 1' in text
