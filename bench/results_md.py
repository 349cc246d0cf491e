"""Render bench/peers.py's JSON as the markdown table of bench/RESULTS.md."""
import json
import sys


def main(path):
    d = json.load(open(path))
    print(f"GPU: {d['gpu']}, torch {d['torch']}\n")
    print("| case | ours ms | TFLOP/s | sdpa_concat | sdpa_dense | flex_dense | sdpa_nobias | best peer / ours | ours / nobias | rel L2 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in d["rows"]:
        if "error" in r:
            print(f"| {r['case']} | failed: {r['error']} |")
            continue
        peers = [r.get(k) for k in ("sdpa_concat_ms", "sdpa_dense_ms", "flex_dense_ms") if r.get(k)]
        best = min(peers) if peers else float("nan")
        flex = f"{r['flex_dense_ms']:.3f}" if r.get("flex_dense_ms") else r.get("flex_dense_error", "-")[:40]
        ours = f"{r['flashbias_ms']:.3f}"
        if len(r.get("flashbias_rounds_ms", [])) > 1:  # bench/peers.py --rounds: the spread of the rounds
            ours += f" ({min(r['flashbias_rounds_ms']):.3f}-{max(r['flashbias_rounds_ms']):.3f})"
        print(f"| {r['case']} | {ours} | {r['flashbias_tflops']:.0f} | {r['sdpa_concat_ms']:.3f} | "
              f"{r['sdpa_dense_ms']:.3f} | {flex} | {r['sdpa_nobias_ms']:.3f} | {best / r['flashbias_ms']:.2f}x | "
              f"{r['flashbias_ms'] / r['sdpa_nobias_ms']:.2f}x | {r.get('rel_l2', float('nan')):.1e} |")


if __name__ == "__main__":
    main(sys.argv[1])
