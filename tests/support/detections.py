"""Detection and event bodies as a replay writes them, for the export tests."""

from __future__ import annotations

import obspy

from quakemon.wire.schema import detection_body, event_body

T0 = 1_251_072_000.0
MODEL = {"name": "hybridvit-test", "sha256": "ab" * 32}
STATIONS = ["BW.RJOB.", "BW.MANZ.00", "GR.FUR.", "BW.RJOB.", "GR.WET.", "BW.ZUGS."]


def detection(k: int, state: str = "new") -> dict:
    extra = {"end": T0 + 10 * k + 30, "close_reason": "off"} if state == "closed" else {}
    if k in (1, 4):  # detections with a refined pick
        extra.update(onset=T0 + 10 * k + 1.25, pick_uncertainty_s=0.05 * k, pick_method="quakemon-picker")
    else:
        extra.update(onset=T0 + 10 * k)
    return detection_body(station=STATIONS[k], state=state, label="earthquake", probability=0.8 + k / 100,
                          probabilities={"noise": 0.1, "earthquake": 0.9}, window_start=T0 + 10 * k,
                          window_end=T0 + 10 * k + 20, peak_probability=0.95, model=MODEL, **extra)


def event(ks: list[int], state: str = "new", missing: str | None = None) -> dict:
    rows = [{"station": STATIONS[k], "onset": T0 + 10 * k, "probability": 0.9,
             "detection_id": detection(k)["id"]} for k in ks]
    if missing is not None:
        rows.append({"station": "XX.GONE.", "onset": T0 + 100, "probability": 0.7, "detection_id": missing})
    extra = {"close_reason": "window"} if state == "closed" else {}
    return event_body(state=state, label="earthquake", stations=rows, coincidence_sum=len(rows), threshold=2.0,
                      window_s=60.0, **extra)


def bodies() -> list[dict]:
    """What a replay writes: detections new then closed, an event new then closed, one naming a lost detection."""
    return [detection(k) for k in range(6)] + [
        event([0, 1]), detection(0, "closed"), event([0, 1, 2], "closed"), event([4], missing="feedfacefeed"),
    ]


def expected_picks() -> dict[str, tuple[float, str, str, str]]:
    """pick id -> (time, net, sta, loc) for every detection, plus the stub for the detection an event lost."""
    out = {}
    for k in range(6):
        det = detection(k)
        time = det["pick"]["time"] if "pick" in det else det["onset"]
        out[det["id"]] = (obspy.UTCDateTime(time), *STATIONS[k].split("."))
    out["feedfacefeed"] = (obspy.UTCDateTime(T0 + 100), "XX", "GONE", "")
    return out
