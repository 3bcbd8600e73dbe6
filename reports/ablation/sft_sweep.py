"""The SFT sweep behind the study's choices (a measurement script, not part of the package): how far held-out step
accuracy gets with SFT alone, per model size, data filter and learning rate, evaluated at 400 ... 3200 steps.

Run once on a borrowed GPU (one H200, six configs in parallel, ~3 min) to see the plateau that 2 CPU cores can't
reach in an hour; results in sft_sweep.jsonl beside this file. A plain PyTorch loop (completion-only loss, AdamW at a
constant rate, batch 8, grad clip 1) over the study's filtered output-task rows, with the tokenizer the study built;
greedy evaluation on the first 60 filtered held-out rows; step accuracy = share of gold anchors printed exactly in
position; final = the <answer> text equal to the gold repr (a string proxy; the study judges by execution).

    # data.json: {"train": [{prompt, completion, gold, out, chars}], "heldout": [{prompt, gold, out, chars}]}
    python sft_sweep.py NAME SIZE MAX_ANCHORS MAX_PROMPT_CHARS LR BATCH 400,800,1200,1600,2400,3200
    # A tiny 6 700 2e-3 | B tiny 4 500 2e-3 | C small 6 700 3e-3 | D tiny 6 700 1e-3 | E mid 6 700 2e-3 |
    # F tiny 3 500 2e-3   (tiny = 256 hidden x 4 layers; mid = 192 x 3; small = 128 x 2; vocab 4096 each)
"""
import json, os, re, sys, time, torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
name, size, maxn, maxc, lr, bs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
CKPT = [int(x) for x in sys.argv[7].split(',')]
torch.manual_seed(0); dev = 'cuda' if torch.cuda.is_available() else 'cpu'; import os
tok = AutoTokenizer.from_pretrained('tok'); tok.padding_side = 'left'
D = json.load(open('data.json'))
ok = lambda r: len(r['gold']) <= maxn and r['chars'] <= maxc
train = [r for r in D['train'] if ok(r)]; ho = [r for r in D['heldout'] if ok(r)][:int(os.environ.get('NHO', 60))]
dims = {'tiny': (256, 688, 4, 8, 4), 'small': (128, 344, 2, 4, 2), 'mid': (192, 512, 3, 6, 2)}[size]
cfg = LlamaConfig(vocab_size=len(tok), hidden_size=dims[0], intermediate_size=dims[1], num_hidden_layers=dims[2],
                  num_attention_heads=dims[3], num_key_value_heads=dims[4], max_position_embeddings=4096,
                  pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None, tie_word_embeddings=True)
model = LlamaForCausalLM(cfg).to(dev)
def enc(r):
    p = tok.apply_chat_template(r['prompt'], add_generation_prompt=True, tokenize=False)
    pi = tok(p, add_special_tokens=False)['input_ids']; ci = tok(r['completion'] + '<|im_end|>', add_special_tokens=False)['input_ids']
    return pi + ci, [-100] * len(pi) + ci
E = [enc(r) for r in train]
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
def batch(idx):
    xs = [E[i] for i in idx]; L = max(len(x[0]) for x in xs)
    ids = torch.full((len(xs), L), tok.pad_token_id); lab = torch.full((len(xs), L), -100); att = torch.zeros((len(xs), L), dtype=torch.long)
    for j, (a, b) in enumerate(xs):
        ids[j, :len(a)] = torch.tensor(a); lab[j, :len(b)] = torch.tensor(b); att[j, :len(a)] = 1
    return ids.to(dev), lab.to(dev), att.to(dev)
def evaluate():
    model.eval(); steps = tot = fin = 0; sample = None
    with torch.no_grad():
        for k in range(0, len(ho), 30):
            rows = ho[k:k + 30]
            ps = [tok.apply_chat_template(r['prompt'], add_generation_prompt=True, tokenize=False) for r in rows]
            b = tok(ps, return_tensors='pt', padding=True, add_special_tokens=False).to(dev)
            out = model.generate(**b, max_new_tokens=200, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
            texts = tok.batch_decode(out[:, b['input_ids'].shape[1]:], skip_special_tokens=True)
            for r, t in zip(rows, texts):
                pr = [x.strip() for x in re.findall(r'<print>(.*?)</print>', t, re.S)]
                steps += sum(1 for i, g in enumerate(r['gold']) if i < len(pr) and pr[i] == g.strip()); tot += len(r['gold'])
                a = re.findall(r'<answer>(.*?)</answer>', t, re.S); fin += bool(a) and a[0].strip() == r['out'].strip()
                sample = sample or t[:300]
    model.train(); return steps / tot, fin / len(ho), sample
g = torch.Generator().manual_seed(0); step = 0; t0 = time.time(); model.train()
print(name, 'train', len(train), 'heldout', len(ho), flush=True)
while step < CKPT[-1]:
    perm = torch.randperm(len(E), generator=g).tolist()
    for k in range(0, len(perm) - bs + 1, bs):
        ids, lab, att = batch(perm[k:k + bs])
        loss = model(input_ids=ids, attention_mask=att, labels=lab).loss
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad(); step += 1
        if step in CKPT:
            sa, fa, s = evaluate()
            print(json.dumps({'cfg': name, 'step': step, 'loss': round(loss.item(), 3), 'step_acc': round(sa, 3), 'final_acc': round(fa, 3), 't': round(time.time() - t0)}), flush=True)
            if step == CKPT[-1]: print(name, 'SAMPLE', repr(s), flush=True)
        if step >= CKPT[-1]: break
