"""bench/gpu/timeline_summary.py on hand-made timelines: the per-kernel charges against values worked out by hand,
and bad CSVs rejected with a message naming what is wrong. Run: python3 -m unittest tests/bench/test_timeline_summary.py"""
import os
import subprocess
import sys
import tempfile
import unittest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "bench", "gpu", "timeline_summary.py")
HEADER = "start_ns,end_ns,stream,graph,graph_node,name\n"


def run(text):
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        f.write(text)
        path = f.name
    try:
        return subprocess.run([sys.executable, SCRIPT, path], capture_output=True, text=True)
    finally:
        os.unlink(path)


class TimelineSummary(unittest.TestCase):
    def test_charges_add_up_to_the_span(self):
        # Four replays of graph 7, 10 us apart: a runs 0-2 us; b 1.5-4.5 us (overlaps a by 0.5); an idle
        # microsecond; c 5.5-6.5 us. By hand: span 6.5, idle 1.0, a charged 2.0 (its own start to its end),
        # b 2.5 (a's end to b's end), c 2.0 (b's end to c's end, the idle gap included). Plus one eager kernel.
        lines = [HEADER, "0,1000,1,0,0,eager_kernel\n"]
        t = 10000
        for _ in range(4):
            lines.append(f"{t},{t + 2000},1,7,1,void moe::cuda::a_kernel<(moe::DType)2; 1>(moe::cuda::GemvParams)\n")
            lines.append(f"{t + 1500},{t + 4500},1,7,2,void moe::cuda::b_kernel(float*)\n")
            lines.append(f"{t + 5500},{t + 6500},1,7,3,c_kernel\n")
            t += 10000
        r = run("".join(lines))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("13 kernels, 1 outside graphs, 1 graphs", r.stdout)
        self.assertIn("3 replays timed; span 6.5 us (min 6.5, max 6.5), idle 1.0 us", r.stdout)
        charged = {}
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[-1].endswith("%"):  # name (may hold spaces), n, busy, charged, share
                charged[" ".join(parts[:-4])] = float(parts[-2])
        self.assertEqual(charged, {"a_kernel<(DType)2; 1>": 2.0, "b_kernel": 2.5, "c_kernel": 2.0})

    def test_a_csv_without_its_columns_is_named(self):
        r = run("a,b\n1,2\n")
        self.assertEqual(r.returncode, 2)
        self.assertIn("not a kernel_timeline CSV: no column start_ns, end_ns, graph, graph_node, name", r.stderr)

    def test_a_time_that_is_not_an_integer_is_named(self):
        r = run(HEADER + "x,1,1,1,1,k\n")
        self.assertEqual(r.returncode, 2)
        self.assertIn("a time, graph or node that is not an integer", r.stderr)


if __name__ == "__main__":
    unittest.main()
