"""Neural building blocks shared by the models: attention, position/time biases, layers."""
