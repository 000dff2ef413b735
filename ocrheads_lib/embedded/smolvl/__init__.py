"""smol-vl: the project's OCR eye feeding the pretrained SmolLM2-135M-Instruct, as a Qwen2-VL model.

    build.py       assemble the model, tokenizer and processor; least-squares init of the merger output
    train.py       the resumable LoRA + merger training (`python -m ocrheads_lib.embedded.smolvl.train`)
    weights_io.py  the shipped parts (eye, merger, new token embeddings, LoRA factors) and the merge
    load.py        `ensure_smolvl()`: the merged transformers folder in the user cache (`load_model("smol-vl")`)
    evaluate.py    held-out greedy evaluation through the adapter
    card.py        the model card (`python -m ocrheads_lib.embedded.smolvl.card`): card_template.md (the static
                   prose) filled from the training record and the evaluation, written to card.md
"""
