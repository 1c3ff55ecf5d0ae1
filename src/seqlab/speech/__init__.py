"""Speech recognition: features in ``seqlab.data.audio``; here the losses (CTC, RNN transducer),
their decoders, the encoders and the recognisers built from them (``seqlab.speech.recogniser``)."""
