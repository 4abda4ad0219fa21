"""Studies: configs that compose conf/'s building blocks (`transferlab-train -cn NAME`)."""
