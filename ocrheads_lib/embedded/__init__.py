"""The embedded models: trained by this project, shipped inside the package, loaded offline.

    tiny/     the book's default model, a tiny Qwen2-VL trained from scratch (`load_model("tiny")`)
    smolvl/   smol-vl: the tiny model's OCR eye feeding the pretrained SmolLM2-135M-Instruct
              (`load_model("smol-vl")`)

Each holds its `build`, `train`, `evaluate` and card modules and its shipped `weights/`.
"""
