# Compute nodes as separate hosts on one machine (start.sh --nodes N); sourced after common.sh.
#
# Each node nodeI gets a network namespace ctsl<tag>-nodeI with a veth (eth0 inside, ctsl<tag>nI
# outside) into the bridge ctsl<tag>, which holds <subnet>.1 on a private 10.213.K.0/24; the node
# itself is <subnet>.(10+I). Its slurmd runs there in its own UTS namespace (hostname nodeI) and
# mount namespace (the nodes' hosts file bind-mounted on /etc/hosts, so every node resolves every
# other by name); the rest of the filesystem is the host's, the nodes' shared filesystem.
# Everything made is recorded in $NETWORK_FILE as it is made, so stop.sh removes exactly that.
# Written by hand: no packaged tool makes a multi-host Slurm on one machine (Debian's slurmd is not
# built for several slurmd per host, so each node needs its own network namespace).

NETWORK_FILE="$ETC/network"  # "subnet|bridge|netns|veth NAME" lines, in the order they were made
HOSTS_FILE="$ETC/hosts"      # /etc/hosts of every node

# node_names N: node1 .. nodeN, one per line.
node_names() { local i; for (( i = 1; i <= $1; i++ )); do echo "node$i"; done; }

# net_tag: 4 hex digits from the state folder: two clusters' bridges and namespaces never share names.
net_tag() { printf '%04x' $(( $(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % 65536 )); }

node_netns() { echo "ctsl$(net_tag)-$1"; }

record() { echo "$1 $2" >> "$NETWORK_FILE"; }
recorded() { [ -s "$NETWORK_FILE" ] && awk -v k="$1" '$1 == k {print $2}' "$NETWORK_FILE"; return 0; }

# node_addr nodeI: the node's address on the bridge.
node_addr() { echo "$(recorded subnet).$(( 10 + ${1#node} ))"; }
bridge_addr() { echo "$(recorded subnet).1"; }

# pick_subnet: first three octets of a 10.213.K.0/24 no interface or route here uses (K stable per
# state folder when free).
pick_subnet() {
    local used k n
    used="$(ip -4 -o addr show | awk '{print $4}'; ip -4 route show | awk '{print $1}')"
    k=$(( 1 + $(printf '%s' "$STATE" | cksum | cut -d' ' -f1) % 250 ))
    for (( n = 0; n < 250; n++ )); do
        grep -q "^10\.213\.$k\." <<<"$used" || { echo "10.213.$k"; return 0; }
        k=$(( k % 250 + 1 ))
    done
    die "no free 10.213.K.0/24 subnet left for the nodes' bridge"
}

netns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
netns_empty() { [ -z "$(ip netns pids "$1" 2>/dev/null)" ]; }

# kill_netns NAME SIGNAL: send SIGNAL to every process in the namespace.
kill_netns() {
    local pid
    for pid in $(ip netns pids "$1" 2>/dev/null); do kill "-$2" "$pid" 2>/dev/null || true; done
}

# create_network N: the bridge, N namespaces with their veths, and the hosts file.
create_network() {
    local tag subnet bridge i node ns veth
    tag="$(net_tag)"
    bridge="ctsl$tag"
    [ -s "$NETWORK_FILE" ] && teardown_network  # leftovers of a cluster that was not stopped
    for ns in $(node_names "$1"); do netns_exists "ctsl$tag-$ns" && teardown_netns "ctsl$tag-$ns"; done
    ip link show "$bridge" >/dev/null 2>&1 && ip link del "$bridge"
    subnet="$(pick_subnet)"
    : > "$NETWORK_FILE"
    record subnet "$subnet"
    ip link add "$bridge" type bridge || die "could not create the bridge $bridge (ip link add)"
    record bridge "$bridge"
    ip addr add "$subnet.1/24" dev "$bridge" && ip link set "$bridge" up || die "could not configure $bridge"
    printf '127.0.0.1\tlocalhost\n%s.1\t%s\n' "$subnet" "$HOST" > "$HOSTS_FILE"
    for (( i = 1; i <= $1; i++ )); do
        node="node$i" ns="ctsl$tag-node$i" veth="ctsl${tag}n$i"
        ip netns add "$ns" || die "could not create the network namespace $ns"
        record netns "$ns"
        ip link add "$veth" type veth peer name eth0 netns "$ns" || die "could not create the veth $veth"
        record veth "$veth"
        ip link set "$veth" master "$bridge" up \
            && ip -n "$ns" addr add "$subnet.$(( 10 + i ))/24" dev eth0 \
            && ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up \
            || die "could not configure $veth / eth0 in $ns"
        printf '%s.%s\t%s\n' "$subnet" $(( 10 + i )) "$node" >> "$HOSTS_FILE"
    done
}

# teardown_netns NAME: stop what runs inside (deleting a namespace kills nothing), then delete it.
teardown_netns() {
    kill_netns "$1" TERM
    if ! wait_until 10 netns_empty "$1"; then
        log "processes left in $1 after SIGTERM, killing them: $(ip netns pids "$1" | tr '\n' ' ')"
        kill_netns "$1" KILL
        wait_until 5 netns_empty "$1" || log "processes still in $1: $(ip netns pids "$1" | tr '\n' ' ')"
    fi
    ip netns del "$1" 2>/dev/null || log "could not delete the network namespace $1"
}

# teardown_network: remove every namespace, veth and bridge recorded in $NETWORK_FILE.
teardown_network() {
    local name
    for name in $(recorded netns); do netns_exists "$name" && teardown_netns "$name"; done
    for name in $(recorded veth) $(recorded bridge); do
        ip link show "$name" >/dev/null 2>&1 && { ip link del "$name" || log "could not delete the link $name"; }
    done
    rm -f "$NETWORK_FILE"
}

# start_node_slurmd nodeI: slurmd on that node, inside its namespaces (it daemonizes).
# Not `ip netns exec`: it remounts /sys, hiding /sys/fs/cgroup, and slurmd 22.05 then refuses to start.
start_node_slurmd() {
    local ns
    ns="$(node_netns "$1")"
    netns_exists "$ns" || die "the network namespace $ns of $1 is gone: stop.sh, then start.sh --nodes again"
    nsenter --net="/run/netns/$ns" unshare --uts --mount --propagation private \
        sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -N "$1"' sh "$1" "$HOSTS_FILE" \
        </dev/null >>"$LOG/slurmd-$1.log" 2>&1
}
