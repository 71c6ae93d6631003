"""The embedder ONNX graph (Conv, PRelu, Add, Reshape) as a trainable torch module."""
import onnx, torch, torch.nn as nn, torch.nn.functional as F
from onnx import numpy_helper, helper

class OnnxNet(nn.Module):
    """Runs a Conv/PRelu/Add/Reshape ONNX graph with trainable weights."""
    def __init__(self, path):
        super().__init__()
        m = onnx.load(path)
        self.model = m
        inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
        self.params = nn.ParameterDict()
        self.pname = {}
        self.nodes = []
        for n in m.graph.node:
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            for i in n.input:
                if i in inits and n.op_type in ('Conv', 'PRelu') and i not in self.pname:
                    key = 'p' + str(len(self.pname))
                    self.pname[i] = key
                    self.params[key] = nn.Parameter(torch.from_numpy(inits[i].copy()))
            self.nodes.append((n.op_type, list(n.input), list(n.output), attrs))
        self.input = m.graph.input[0].name
        self.output = m.graph.output[0].name

    def forward(self, x):
        env = {self.input: x}
        P = lambda name: self.params[self.pname[name]]
        for op, ins, outs, a in self.nodes:
            if op == 'Conv':
                p = a.get('pads', [0, 0, 0, 0])
                y = F.conv2d(env[ins[0]], P(ins[1]), P(ins[2]) if len(ins) > 2 else None,
                             stride=a['strides'], padding=(p[0], p[1]), groups=a.get('group', 1))
            elif op == 'PRelu':
                s = P(ins[1])
                y = F.prelu(env[ins[0]], s.reshape(-1))
            elif op == 'Add':
                y = env[ins[0]] + env[ins[1]]
            elif op == 'Reshape':
                y = env[ins[0]].reshape(env[ins[0]].shape[0], -1)
            else:
                raise ValueError(op)
            env[outs[0]] = y
        return env[self.output]

    def save(self, path):
        m = self.model
        for init in m.graph.initializer:
            if init.name in self.pname:
                arr = self.params[self.pname[init.name]].detach().numpy().astype('float32')
                init.CopyFrom(numpy_helper.from_array(arr.reshape(numpy_helper.to_array(init).shape), init.name))
        onnx.save(m, path)
