"""DDP: two CPU processes (gloo), the model wrapped the way Ultralytics' trainer wraps it, sparse routing for a few
optimiser steps on different data per rank: the ranks' weights, and their loss-free balancing biases, stay identical."""

import torch

from conftest import run_on_two_gloo_ranks

WORK = r'''
def work(rank, out):
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load
    from ultralytics.utils import DEFAULT_CFG
    from ultralytics_dsmoe.costs import set_experts
    from ultralytics_dsmoe.nn import SparseMoE
    from ultralytics_dsmoe.nn.moe import update_selection_biases
    d = set_experts(yaml_model_load("dsmoe-n.yaml"), ne=8, topk=2)  # few samples leave most experts unrouted per rank
    for row in d["backbone"]:
        if row[2] == "SparseMoE":
            row[3] = [*row[3][:3], "bias"]  # loss-free balancing: biases move with each rank's own routing
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights at wrap time
    model = DetectionModel(d, nc=4, verbose=False)
    model.args = DEFAULT_CFG
    ddp = DDP(model, find_unused_parameters=True, broadcast_buffers=False)  # as ultralytics/engine/trainer.py
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(100 + rank)  # each rank sees its own images
    routed = []
    for step in range(3):
        batch = {"img": torch.rand(2, 3, 64, 64, generator=g), "batch_idx": torch.tensor([0.0, 1.0]),
                 "cls": torch.tensor([[float(rank)], [2.0]]),
                 "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.3, 0.6, 0.2, 0.5]])}
        loss, items = ddp(batch)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        update_selection_biases(model)  # as the trainer's batch-end callback: a collective on both ranks
        moe = next(m for m in model.modules() if isinstance(m, SparseMoE))
        routed.append(moe.last_routing[1])
    torch.save({"params": {k: v.detach() for k, v in model.named_parameters()}, "routed": routed,
                "bias": moe.router.select_bias.clone()}, f"{out}/rank{rank}.pt")
'''


def test_ddp_ranks_keep_identical_weights_under_sparse_routing(tmp_path):
    r = run_on_two_gloo_ranks(tmp_path, WORK, tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert any(not torch.equal(x, y) for x, y in zip(a["routed"], b["routed"]))  # ranks routed differently
    assert a["bias"].abs().max() > 0 and torch.equal(a["bias"], b["bias"])  # updated from the loads of both ranks
    for name, p in a["params"].items():
        torch.testing.assert_close(b["params"][name], p, rtol=0, atol=0, msg=name)
