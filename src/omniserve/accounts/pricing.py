"""What a request costs at the catalog's list prices (per million tokens, one region)."""

from __future__ import annotations

from omniserve.catalog import ModelSpec, Price
from omniserve.job import Usage


def price_for(model: ModelSpec, region: str) -> Price | None:
    return next((p for p in model.prices if p.region == region), None)


def cost(model: ModelSpec, usage: Usage, region: str) -> float:
    """The vendor's rules: image and video input share a price; text out is dearer after
    media input; with audio out the audio tokens are billed and the text that goes with them is
    free; reasoning tokens cost what text out costs. 0 where the catalog has no price."""
    price = price_for(model, region)
    if price is None:
        return 0.0
    p, c = usage.prompt, usage.completion
    total = p.text * price.input_text + p.audio * price.input_audio
    if p.image or p.video:
        visual = price.input_image_video
        total += (p.image + p.video) * (visual if visual is not None else price.input_text)
    text_out = (
        price.output_text_multimodal_input if (p.image or p.video or p.audio) else price.output_text
    )
    if c.audio:
        total += c.audio * price.output_audio
    else:
        total += c.text * text_out
    total += c.reasoning * text_out
    return total / 1_000_000
