"""Adapters for other people's tools, loaded only when asked for (``import envconv`` does not import them).

* :mod:`envconv.integrations.flops` - FLOP counts of envconv's layers and ops for fvcore, ptflops,
  thop and torchinfo.
* :mod:`envconv.integrations.quantization` - Conv-BN fusion and PT2E quantization of converted models.
"""
