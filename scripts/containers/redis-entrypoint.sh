#!/bin/sh
# Like the official image: `redis-server ARGS` (or just ARGS starting with "-") runs with protected mode off
# unless ARGS say otherwise; anything else runs as given.
set -e
case "$1" in -*) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ]; then
    shift
    case "$1" in
        "" | -*) set -- redis-server --protected-mode no "$@" ;;
        *) conf="$1"; shift; set -- redis-server "$conf" --protected-mode no "$@" ;;
    esac
fi
exec "$@"
