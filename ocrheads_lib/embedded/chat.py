"""The chat-template fragment both embedded models share: one message's content, rendered the Qwen2-VL way.

A string content is copied; a list renders each item in order: an image item as
`<|vision_start|><|image_pad|><|vision_end|>`, a video item with `<|video_pad|>`, a text item as its text.
The processor then expands each pad into the item's visual tokens. The tiny model's template
(`tiny.build.CHAT_TEMPLATE`) and smol-vl's (`smolvl.build.CHAT_TEMPLATE`, SmolLM2's own around it) differ
only in how they open and close a turn.
"""

MESSAGE_CONTENT = (
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
)
