"""
Neural Networks, with the gradients in view
===========================================

This is the "Neural Networks" part of PyTorch's *Deep Learning with PyTorch: A 60 Minute
Blitz*, step by step, on its LeNet, with gradscope showing what each step does to the
gradients: the backward graph with the gradient that flowed through every node, ``.grad``
before and after ``backward()``, the hand-written update checked against ``torch.optim``, and
the report of a short training run. ``gradscope demo`` tells the same story in a terminal.
"""

# %%
# Define the network
# ------------------
#
# The tutorial's LeNet: two convolutions, three fully connected layers. ``gradscope.LeNet``
# is that class, so the numbers below can be compared with the tutorial's.

import matplotlib.pyplot as plt
import torch
from torch import nn, optim

import gradscope

torch.manual_seed(0)
net = gradscope.LeNet()
print(net)

params = list(net.parameters())
print(len(params), "parameter tensors; conv1's weight:", tuple(params[0].size()))

# %%
# Zero the gradient buffers and backpropagate random gradients
# ------------------------------------------------------------
#
# ``gradscope.watch(net)`` records every backward pass while it is open: for each parameter,
# ``.grad`` before the pass, after it, and what the pass added.

input = torch.randn(1, 1, 32, 32)
with gradscope.watch(net) as w:
    net.zero_grad()
    out = net(input)
    out.backward(torch.randn(1, 10))

record = w.last
print(f"{len(record)} parameters got a gradient; missing: {record.missing}")
print(w.summary())

# %%
# A loss function
# ---------------
#
# ``nn.MSELoss`` against a random target. ``loss.grad_fn`` is the last node of the graph that
# ``backward()`` will walk.

output = net(input)
target = torch.randn(10).view(1, -1)
criterion = nn.MSELoss()
loss = criterion(output, target)
print(loss)

# %%
# Following the graph backwards
# -----------------------------
#
# The tutorial follows ``next_functions`` by hand and calls the third node "ReLU"; torch
# prints ``AccumulateGrad``: the leaf node that adds the incoming gradient into
# ``fc3.bias.grad``. gradscope names the parameter behind every ``AccumulateGrad``.

print(loss.grad_fn)  # MSELoss
print(loss.grad_fn.next_functions[0][0])  # Linear
print(loss.grad_fn.next_functions[0][0].next_functions[0][0])  # the tutorial's "ReLU"

g = gradscope.graph(loss, params=net, grads=True)  # before backward: records what flows
print(" -> ".join(n.label for n in g.path(0, 0)))

# %%
# Backprop
# --------
#
# ``conv1.bias.grad`` before and after ``loss.backward()``: the watch records both sides.
# The graph from the step above recorded the same pass: each node is coloured by the
# gradient norm that flowed through it, and each parameter is named at the op that uses it.

with gradscope.watch(net) as w:
    net.zero_grad()
    print("conv1.bias.grad before backward:", net.conv1.bias.grad)
    loss.backward()
    print("conv1.bias.grad after backward: ", net.conv1.bias.grad)

print("recorded:", w.last["conv1.bias"].after)
g.save("lenet-backward-graph.svg")

# %%
# Update the weights
# ------------------
#
# The tutorial's hand-written SGD step, ``weight = weight - learning_rate * gradient``,
# checked against what ``optim.SGD(lr=0.01)`` would have done; then a deliberate typo for
# one parameter (``add_`` instead of ``sub_``), caught and named.

learning_rate = 0.01
optimizer = optim.SGD(net.parameters(), lr=learning_rate)  # only says what to expect
saved = {name: p.detach().clone() for name, p in net.named_parameters()}
with gradscope.check_step(optimizer, params=net, manual=True) as report:
    for f in net.parameters():
        f.data.sub_(f.grad.data * learning_rate)
print(report.headline())

with torch.no_grad():  # back to the weights before the step, to try the typo
    for name, p in net.named_parameters():
        p.copy_(saved[name])
with gradscope.check_step(optimizer, params=net, manual=True) as report:
    for name, f in net.named_parameters():
        if name == "fc1.weight":
            f.data.add_(f.grad.data * learning_rate)  # the typo
        else:
            f.data.sub_(f.grad.data * learning_rate)
print(report.failure_message().split("\nparameter")[0])

# %%
# Training with torch.optim
# -------------------------
#
# Forty steps of the tutorial's training loop, watched. ``w.graph(loss)`` on the last step
# keeps that pass's graph for the report.

with torch.no_grad():
    for name, p in net.named_parameters():
        p.copy_(saved[name])
losses = []
with gradscope.watch(net) as w:
    for step in range(40):
        optimizer.zero_grad()
        loss = criterion(net(input), target)
        if step == 39:
            w.graph(loss)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
left.plot(losses)
left.set(title="loss", xlabel="step", yscale="log")
for name in ("conv1.weight", "fc1.weight", "fc3.weight"):
    right.plot([r.stats.norm for r in w.history(name)], label=name)
right.set(title="gradient norm per pass", xlabel="backward pass", yscale="log")
right.legend()
fig.tight_layout()

# %%
# The report
# ----------
#
# ``w.report(path)`` writes one self-contained page: the per-parameter table with each
# norm over the passes, the gradient-flow chart (mean and max ``|grad|`` per layer), the
# norms over the passes, and the last pass's backward graph.

w.report("lenet-report.html")
