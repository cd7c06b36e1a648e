"""Gradient methods take only the gradients they read (torch.autograd.grad on the recorded tensors):
no parameter gradient is computed and a caller's own `.grad` stays exactly as it was."""

import torch

import xaikit

from conftest import small_vit


def test_explain_leaves_parameter_grads_untouched():
    model = small_vit()
    images = torch.randn(2, 3, 64, 64)
    model(images).logsumexp(1).sum().backward()  # the caller's training step, half done
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    xaikit.explain(model, images, "gae")
    for name, p in model.named_parameters():
        assert torch.equal(p.grad, before[name]), f"explain changed {name}.grad"


def test_explain_leaves_grad_none_and_computes_no_parameter_gradient():
    model = small_vit()
    computed = []
    for name, p in model.named_parameters():
        p.register_hook(lambda grad, name=name: computed.append(name))
    xaikit.explain(model, torch.randn(2, 3, 64, 64), "gae")
    assert computed == []  # autograd never reached a parameter
    assert all(p.grad is None for p in model.parameters())


def test_recorder_backprop_equals_backward():
    model = small_vit()
    images = torch.randn(2, 3, 64, 64)
    with xaikit.ViTRecorder(model, record=(), grads=("attn", "values")) as recorder:
        recorder.backprop(model(images)[:, 3].sum())
        ours = [(blk.grad("attn"), blk.grad("values")) for blk in recorder.blocks]
    with xaikit.ViTRecorder(model, record=(), grads=("attn", "values")) as recorder:
        model(images)[:, 3].sum().backward()
        reference = [(blk.grad("attn"), blk.grad("values")) for blk in recorder.blocks]
    for (a, v), (ra, rv) in zip(ours, reference):
        torch.testing.assert_close(a, ra, rtol=0, atol=0)
        torch.testing.assert_close(v, rv, rtol=0, atol=0)
