"""Pricing a bid from request features: the CPU-bound heart of a bidder shard.

A real bidder spends most of its time extracting features from the request and evaluating a
model. This module does the same kind of work for real, so that CPU accounting, hot-spot
detection on cost and the benchmarks see honest numbers: it hashes features of every
impression and of the request (media type, size, position, device, context, publisher) into a
fixed table of weights, once per "round" (an ensemble of small linear models), and turns the
score into a price above the floor. No sleeping: cost is real CPU, about 50-150 µs a request.
"""

from __future__ import annotations

import math
import random
import zlib
from array import array
from typing import Any

from hotshard_bidder.openrtb import BidRequestView, Imp

_TABLE_BITS = 16
_MASK = (1 << _TABLE_BITS) - 1
# NB: a fixed seed gives every shard the same "model", as if it were loaded from one artefact.
_WEIGHTS = array("d", (random.Random(20_240_601).gauss(0.0, 0.05) for _ in range(1 << _TABLE_BITS)))

MEDIA_VALUE = {"banner": 1.0, "native": 1.3, "audio": 1.6, "video": 2.5}
"""Relative value of a media type: video and audio impressions clear higher than banners."""
DEVICE_VALUE = {1: 1.1, 2: 1.0, 3: 1.8, 4: 1.1, 5: 1.05, 6: 1.2, 7: 1.6}
"""By OpenRTB ``device.devicetype``: connected TV (3) and set-top boxes (7) are worth most."""
SHADE = 0.7
"""First-price shading: bid 70% of the way from the floor to our value, not all of it."""


def _scalar(value: object) -> str:
    return value if isinstance(value, str) else repr(value)


def request_features(view: BidRequestView) -> list[str]:
    """Features shared by all impressions of the request: device, context and user."""
    doc = view.doc
    out: list[str] = []
    device = doc.get("device")
    if isinstance(device, dict):
        for name in (
            "devicetype",
            "os",
            "osv",
            "make",
            "model",
            "connectiontype",
            "js",
            "language",
        ):
            if name in device:
                out.append(f"d.{name}={_scalar(device[name])}")
        ua = device.get("ua")
        if isinstance(ua, str):
            # Tokenizing the user agent is what real bidders spend much of their time on.
            out.extend(
                f"ua={token}" for token in ua.replace(";", " ").replace("/", " ").split()[:24]
            )
        geo = device.get("geo")
        if isinstance(geo, dict):
            out.extend(
                f"g.{k}={_scalar(geo[k])}" for k in ("country", "region", "city") if k in geo
            )
    for context in ("site", "app"):
        part = doc.get(context)
        if isinstance(part, dict):
            out.append(f"ctx={context}")
            out.extend(
                f"{context}.{k}={_scalar(part[k])}" for k in ("domain", "bundle") if k in part
            )
            publisher = part.get("publisher")
            if isinstance(publisher, dict) and "id" in publisher:
                out.append(f"pub={_scalar(publisher['id'])}")
            cats = part.get("cat")
            if isinstance(cats, list):
                out.extend(f"cat={_scalar(c)}" for c in cats[:8])
    user = doc.get("user")
    if isinstance(user, dict) and "yob" in user:
        out.append(f"yob={_scalar(user['yob'])}")
    return out


def imp_features(imp: Imp) -> list[str]:
    """Features of one impression: media, sizes, position, placement."""
    out = [f"media={m}" for m in imp.media] or ["media=banner"]
    for m in imp.media:
        spec = imp.raw[m]
        for name in ("w", "h", "pos", "placement", "plcmt", "minduration", "maxduration"):
            if name in spec:
                out.append(f"{m}.{name}={_scalar(spec[name])}")
        formats = spec.get("format")
        if isinstance(formats, list):
            out.extend(
                f"fmt={_scalar(f.get('w'))}x{_scalar(f.get('h'))}"
                for f in formats[:6]
                if isinstance(f, dict)
            )
    out.append(f"instl={_scalar(imp.raw.get('instl', 0))}")
    out.append(f"secure={_scalar(imp.raw.get('secure', 0))}")
    return out


def score(features: list[str], campaign: str, rounds: int) -> float:
    """Sum hashed feature weights over ``rounds`` salted models; a value in ``(-inf, inf)``."""
    total = 0.0
    encoded = [f.encode() for f in features]
    seed = zlib.crc32(campaign.encode())
    weights = _WEIGHTS
    for r in range(rounds):
        salt = seed ^ (r * 0x9E3779B1)
        for feature in encoded:
            total += weights[zlib.crc32(feature, salt) & _MASK]
    return total / max(rounds, 1)


def campaign_base_cpm(campaign: str) -> float:
    """The campaign's base value per thousand impressions, 0.5-5.0, stable per campaign."""
    return 0.5 + 4.5 * ((zlib.crc32(campaign.encode(), 7) & 0xFFFF) / 0xFFFF)


def device_value(doc: dict[str, Any]) -> float:
    device = doc.get("device")
    kind = device.get("devicetype") if isinstance(device, dict) else None
    return DEVICE_VALUE.get(kind, 1.0) if isinstance(kind, int) else 1.0


def price_imp(
    imp: Imp, shared: list[str], campaign: str, rounds: int, device: float
) -> tuple[float, str]:
    """Our price (CPM, US dollars like ``imp.floor``) for one impression and the media type we
    bid with; 0.0 means pass."""
    features = shared + imp_features(imp)
    media = max(imp.media, key=MEDIA_VALUE.__getitem__) if imp.media else "banner"
    value = campaign_base_cpm(campaign) * MEDIA_VALUE[media] * device
    value *= 2.0 / (1.0 + math.exp(-score(features, campaign, rounds)))  # 0..2x the base value
    if value <= imp.floor:
        return 0.0, media
    return imp.floor + SHADE * (value - imp.floor), media
