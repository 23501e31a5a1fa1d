"""The neuron-sensitivity analyses of the SNS papers (ECCV 2020 / TIP): targeted importance, similarity of
sensitive-neuron sets, suppression, sensitivity ratios, the layer-range study, and the papers' claims."""
