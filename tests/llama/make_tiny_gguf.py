#!/usr/bin/env python3
"""Write a tiny, seeded, random-weight LLaMA-architecture model in GGUF format.

The tokenizer (GPT-2 BPE: tokens, token types, merges, BOS/EOS ids) is copied
from a vocab-only GGUF file shipped in the llama.cpp source tree
(models/ggml-vocab-gpt-2.gguf). All weights are random (numpy, fixed seed), so
the model loads in well under a second and generates gibberish, but it
exercises the real llama.cpp inference / HTTP code paths.

Usage:
  python make_tiny_gguf.py --vocab <llama.cpp>/models/ggml-vocab-gpt-2.gguf --out tiny.gguf
"""
import argparse
import sys

import numpy as np
import gguf
from gguf import GGUFReader, GGUFWriter

# Simple ChatML-style template. <|im_start|>/<|im_end|> are not special tokens
# in the GPT-2 vocab, they are just tokenized as text, which is fine here.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def field_value(reader, key):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", required=True, help="vocab-only GGUF (e.g. models/ggml-vocab-gpt-2.gguf)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-head-kv", type=int, default=4)
    ap.add_argument("--n-ff", type=int, default=128)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--name", default="tiny-random-llama")
    args = ap.parse_args()

    vr = GGUFReader(args.vocab)
    tok_model = field_value(vr, "tokenizer.ggml.model")
    tok_pre = field_value(vr, "tokenizer.ggml.pre")
    tokens = field_value(vr, "tokenizer.ggml.tokens")
    token_types = field_value(vr, "tokenizer.ggml.token_type")
    merges = field_value(vr, "tokenizer.ggml.merges")
    bos = field_value(vr, "tokenizer.ggml.bos_token_id")
    eos = field_value(vr, "tokenizer.ggml.eos_token_id")
    if tok_model != "gpt2" or not tokens or not merges:
        sys.exit(f"unexpected vocab file: model={tok_model!r}")
    n_vocab = len(tokens)
    if bos is None:
        bos = n_vocab - 1
    if eos is None:
        eos = n_vocab - 1

    n_embd, n_head, n_head_kv = args.n_embd, args.n_head, args.n_head_kv
    head_dim = n_embd // n_head
    n_embd_kv = head_dim * n_head_kv
    n_ff = args.n_ff
    rng = np.random.default_rng(args.seed)

    def rand(*shape, scale=0.02):
        # numpy shape is the reverse of ggml's ne[]: (rows=out_features, cols=in_features)
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    arch = "llama"
    w = GGUFWriter(args.out, arch)
    w.add_name(args.name)
    w.add_context_length(args.n_ctx)
    w.add_embedding_length(n_embd)
    w.add_block_count(args.n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    # tokenizer, copied from the vocab file
    w.add_tokenizer_model(tok_model)
    if tok_pre:
        w.add_tokenizer_pre(tok_pre)
    w.add_token_list(tokens)
    if token_types:
        w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(int(bos))
    w.add_eos_token_id(int(eos))
    w.add_add_bos_token(False)
    w.add_add_eos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # weights. The two vocab-sized matrices are stored as F16 to keep the file
    # small (~14 MB); a separate random output.weight (not tied to token_embd)
    # avoids the model just echoing its last input token.
    w.add_tensor("token_embd.weight", rand(n_vocab, n_embd, scale=1.0).astype(np.float16))
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", rand(n_vocab, n_embd, scale=1.0).astype(np.float16))
    for i in range(args.n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(n_embd, n_embd))
        w.add_tensor(p + "attn_k.weight", rand(n_embd_kv, n_embd))
        w.add_tensor(p + "attn_v.weight", rand(n_embd_kv, n_embd))
        w.add_tensor(p + "attn_output.weight", rand(n_embd, n_embd))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_up.weight", rand(n_ff, n_embd))
        w.add_tensor(p + "ffn_down.weight", rand(n_embd, n_ff))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {args.out}: arch={arch} n_vocab={n_vocab} n_layer={args.n_layer} "
          f"n_embd={n_embd} n_head={n_head} n_ctx={args.n_ctx} bos={bos} eos={eos} seed={args.seed}")


if __name__ == "__main__":
    main()
