"""The chunked loss's peak memory is a chunk, not the full logits (measured in a fresh process)."""

import subprocess
import sys

PEAK_RSS = """
import resource, sys, torch, torch.nn.functional as F
from pico.loss import linear_cross_entropy
n, d, v = 4096, 64, 50_304
h = torch.randn(n, d, requires_grad=True); w = torch.randn(v, d, requires_grad=True); t = torch.randint(0, v, (n,))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "chunked":
    linear_cross_entropy(h, w, t).backward()
else:
    F.cross_entropy(h @ w.T, t).backward()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_peak_memory_is_a_chunk_not_the_logits():
    """At 4,096 tokens x 50,304 vocabulary one fp32 logits copy is 824 MB; the plain loss and its
    backward hold several, the chunked one a few 256 MiB chunks (peak RSS growth of a process)."""

    def grown(how: str) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, how], capture_output=True, text=True, check=True)
        return int(out.stdout.split()[-1])

    plain, chunked = grown("plain"), grown("chunked")
    full_logits = 4096 * 50_304 * 4
    assert plain > 1.5 * full_logits  # the measurement sees the logits
    assert chunked < full_logits, f"chunked loss grew RSS by {chunked / 2**20:.0f} MiB, plain {plain / 2**20:.0f} MiB"
