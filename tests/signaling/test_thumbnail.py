"""Roster thumbnails: a JPEG of the patient's latest picture, for those who may watch."""

from __future__ import annotations

import asyncio
import io

import aiohttp
import numpy as np
from PIL import Image

from signaling.synthetic import PatternVideoTrack, ToneAudioTrack
from tests.conftest import World
from tests.helpers import http, signaling

GREEN = (20, 180, 40)


async def _get(world: World, path: str, who: str) -> tuple[int, str, bytes]:
    headers = {"Authorization": f"Bearer {world.tokens[who]}"}
    async with (
        aiohttp.ClientSession() as client,
        client.get(world.url + path, headers=headers) as r,
    ):
        return r.status, r.headers.get("Content-Type", ""), await r.read()


async def test_thumbnail_shows_the_patients_picture_to_viewers_only(world: World) -> None:
    s1 = world.sessions["s1"]
    path = f"/api/sessions/{s1}/thumbnail"
    status, body = await http(world, "GET", path, "clin_a")
    assert status == 404 and body["error"]["code"] == "no_picture"
    patient = await signaling(world, "pat1")
    try:
        await patient.publish(
            s1, [ToneAudioTrack(), PatternVideoTrack("Pat One", background=GREEN, fps=20)]
        )
        async with asyncio.timeout(20):
            while True:
                status, ctype, data = await _get(world, path, "clin_a")
                if status == 200:
                    break
                await asyncio.sleep(0.2)
        assert ctype == "image/jpeg"
        image = Image.open(io.BytesIO(data))
        assert image.format == "JPEG" and 0 < image.width <= 320
        corner = np.asarray(image.convert("RGB"))[-3, -3].astype(int)
        assert np.all(np.abs(corner - np.array(GREEN)) < 40), corner
        # Seeing the picture is watching: the patient themself, other clinics and a clinician
        # not assigned are refused.
        for who in ("pat1", "clin_b", "oncall_other"):
            status, _, _ = await _get(world, path, who)
            assert status == 403, who
        status, _, _ = await _get(world, path, "oncall")
        assert status == 200
    finally:
        await patient.close()
