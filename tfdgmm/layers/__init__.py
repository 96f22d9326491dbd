"""The locally-connected transforms as Keras 3 layers (`tfdgmm.layers`).

One layer per bijector of `tfdgmm.bijectors`, with the same name and the same math: each layer
owns Keras weights and builds its bijector from their values inside `call`. `call(x, choice=None)`
maps data towards the latent side (the density direction) and returns `(z, log_det)`; `forward`
runs the generative direction. See `tfdgmm.layers._base.TransformLayer` and `tfdgmm.keras`
(`DeepGMMModel`, a deep GMM you can `fit`).

```python
import tfdgmm.layers as L
patch = L.Patchify(2)
block = L.BlockDiagonal(num_alternatives=4, selection="sample")
h, ld0 = patch(images)                      # [N, 4, 4, 12], zeros [N]
z, ld1 = block(h, choice=choice)            # choice int32 [N]
```
"""

from tfdgmm.layers._base import TransformLayer
from tfdgmm.layers.block_diagonal import BlockDiagonal
from tfdgmm.layers.dense import Dense
from tfdgmm.layers.diagonal import Diagonal
from tfdgmm.layers.half_convolution import HalfConvolution
from tfdgmm.layers.patchify import Patchify

__all__ = ["BlockDiagonal", "Dense", "Diagonal", "HalfConvolution", "Patchify", "TransformLayer"]
