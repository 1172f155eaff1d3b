/* cli/main.c — `rdmamig`: the operator's front end. */
#include <stdio.h>
#include <string.h>

#include "rdmamig.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: rdmamig --version\n"
		"       rdmamig --help\n"
		"\n"
		"Live migration of KVM guests over RDMA (librdmamig %s).\n"
		"The --src/--dst modes are not built yet.\n",
		rdmamig_version());
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "--version")) {
		printf("rdmamig %s\n", rdmamig_version());
		return 0;
	}
	usage(argc == 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
	return argc == 2 && !strcmp(argv[1], "--help") ? 0 : 2;
}
