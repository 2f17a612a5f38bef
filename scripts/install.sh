#!/bin/sh
# install.sh BUILD PREFIX [DESTDIR] [LIBDIR] — what `make install` runs (after building): copies the
# header, both libraries (with the soname symlinks), carseg.pc, the CLI and its man page into
# DESTDIR/PREFIX. Called by the Makefile with VERSION, SONAME and LIBS_PRIVATE in the environment.
set -eu
build=$1 prefix=$2 destdir=${3:-} libdir=${4:-$2/lib}
: "${VERSION:?}" "${SONAME:?}" "${LIBS_PRIVATE?}"
case "$prefix" in /*) ;; *) echo "install.sh: PREFIX must be an absolute path, got '$prefix'" >&2; exit 2;; esac
root=$destdir
install -d "$root$prefix/include" "$root$libdir/pkgconfig" "$root$prefix/bin" "$root$prefix/share/man/man1"
install -m 644 include/carseg.h "$root$prefix/include/carseg.h"
install -m 644 "$build/libcarseg.a" "$root$libdir/libcarseg.a"
install -m 755 "$build/libcarseg.so.$VERSION" "$root$libdir/libcarseg.so.$VERSION"
ln -sf "libcarseg.so.$VERSION" "$root$libdir/$SONAME"
ln -sf "$SONAME" "$root$libdir/libcarseg.so"
install -m 755 "$build/carseg" "$root$prefix/bin/carseg"
install -m 644 docs/carseg.1 "$root$prefix/share/man/man1/carseg.1"
tmp="$root$libdir/pkgconfig/.carseg.pc.$$"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@VERSION@|$VERSION|g" \
    -e "s|@LIBS_PRIVATE@|$LIBS_PRIVATE|g" carseg.pc.in > "$tmp"
chmod 644 "$tmp"
mv "$tmp" "$root$libdir/pkgconfig/carseg.pc"
echo "installed carseg $VERSION into $root$prefix"
