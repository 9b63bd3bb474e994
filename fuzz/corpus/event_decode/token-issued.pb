Z
jsg 