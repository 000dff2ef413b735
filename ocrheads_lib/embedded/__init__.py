"""The embedded models: trained by this project, shipped inside the package, loaded offline.

    tiny/     the book's default model, a tiny Qwen2-VL trained from scratch (`load_model("tiny")`)
    smolvl/   smol-vl: the tiny model's OCR eye feeding the pretrained SmolLM2-135M-Instruct
              (`load_model("smol-vl")`)

Each holds the same modules: `build` (tokenizer, processor, config, model), `train` (resumable training
segments under a typed `TrainConfig`), `evaluate` (held-out greedy evaluation), `card` (the model card from
data plus a markdown source), and its shipped `weights/`. Shared by both: `cards.py` renders a card from
markdown plus data, `chat.py` holds the chat-template fragment for image, video and text items.
"""
