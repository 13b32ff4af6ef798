"""The front ends: the `invokeai-ti` command line (cli), the shell command a config equals (command)
and the `--gui` terminal form (gui/). They only build a TrainingConfig and call train; nothing in the
package imports them."""
