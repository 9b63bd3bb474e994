*version: 1
ab