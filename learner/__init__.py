"""The online DQN learner: consumes ``transitions``, trains, publishes ``models``. Imports
``contracts`` only. (Lands with issue 4.)"""
