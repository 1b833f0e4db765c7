#!/usr/bin/env bash
# Makes localhost/halley-base:bookworm, a local stand-in for gcr.io/distroless/cc-debian12 (used by
# docker/test.sh, which cannot reach a registry): Debian 12 from debootstrap, reduced to what
# distroless "cc" holds — glibc, libgcc, base-files, tzdata, netbase-style /etc files and a passwd
# with root, nobody and nonroot. No shell, no package manager.
#
#   docker/base-image.sh [IMAGE]      (root; needs debootstrap and a Debian mirror)
#   docker/base-image.sh --debian [IMAGE]
#                                     the whole minbase instead (apt included, default image
#                                     localhost/halley-debian:bookworm): the stand-in for
#                                     debian:bookworm-slim that docker/Dockerfile.cluster starts from
# Environment: PODMAN (the podman command, default "podman --storage-driver vfs --runtime runc"),
# DEBIAN_MIRROR (default: the first deb.debian.org-style URI in apt's sources, else deb.debian.org).
set -euo pipefail
debian=0
if [ "${1:-}" = --debian ]; then debian=1; shift; fi
if [ "$debian" = 1 ]; then image=${1:-localhost/halley-debian:bookworm}; else image=${1:-localhost/halley-base:bookworm}; fi
read -r -a podman <<<"${PODMAN:-podman --storage-driver vfs --runtime runc}"

mirror=${DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 "URIs:" lines or one-line "deb URL suite" entries naming a suite "bookworm".
  mirror=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
    | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

work=$(mktemp -d /var/tmp/halley-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
out=$work/out
echo "base-image: debootstrap --variant=minbase bookworm from $mirror"
if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  echo "base-image: debootstrap failed" >&2
  exit 1
fi

if [ "$debian" = 1 ]; then
  # As debian:bookworm-slim: apt works (its sources name the mirror), its caches are empty.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
  tar --numeric-owner -C "$rootfs" -cf "$work/rootfs.tar" .
  echo "base-image: importing $(du -sh "$rootfs" | cut -f1) as $image"
  "${podman[@]}" import --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$image" >/dev/null
  "${podman[@]}" image inspect --format 'base-image: {{.Id}} {{.Size}} bytes' "$image" | cut -c1-200
  exit 0
fi

# The files of the packages distroless cc carries (those that minbase has), with /lib, /bin, /sbin
# spelled under /usr (Debian 12 is merged-/usr: the top-level ones are symlinks).
mkdir -p "$out"
chroot "$rootfs" dpkg -L libc6 libgcc-s1 gcc-12-base base-files tzdata \
  | sed -E 's#^/(lib|lib64|bin|sbin)(/|$)#/usr/\1\2#' \
  | grep -vE '^/usr/share/(doc/.+/changelog|man|info|lintian)|^/usr/(bin|sbin)/|/gconv/' \
  | sort -u >"$work/files"
(cd "$rootfs" && while IFS= read -r f; do
   [ -e ".$f" ] || [ -L ".$f" ] || continue
   if [ -d ".$f" ] && [ ! -L ".$f" ]; then mkdir -p "$out$f"; else mkdir -p "$out$(dirname "$f")"; cp -a ".$f" "$out$f"; fi
 done <"$work/files")
for link in bin lib lib64 sbin; do
  [ -L "$rootfs/$link" ] && cp -a "$rootfs/$link" "$out/$link"
done
cp -a "$rootfs/etc/ld.so.cache" "$out/etc/" 2>/dev/null || true
mkdir -p "$out/tmp" "$out/home/nonroot" "$out/root" "$out/proc" "$out/sys" "$out/dev" "$out/run" "$out/var/tmp"
chmod 1777 "$out/tmp" "$out/var/tmp"
chmod 700 "$out/root"
chown 65532:65532 "$out/home/nonroot"
cat >"$out/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$out/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
printf 'hosts: files dns\n' >"$out/etc/nsswitch.conf"
cp -a "$rootfs/etc/host.conf" "$rootfs/etc/debian_version" "$out/etc/" 2>/dev/null || true
ln -sf ../usr/lib/os-release "$out/etc/os-release"
ln -sf /usr/share/zoneinfo/Etc/UTC "$out/etc/localtime"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$out/etc/hosts"

tar --numeric-owner -C "$out" -cf "$work/rootfs.tar" .
echo "base-image: importing $(du -sh "$out" | cut -f1) as $image"
"${podman[@]}" import --change 'CMD ["/usr/lib64/ld-linux-x86-64.so.2", "--version"]' "$work/rootfs.tar" "$image" >/dev/null
"${podman[@]}" image inspect --format 'base-image: {{.Id}} {{.Size}} bytes' "$image" | cut -c1-200
