/*
 * netlink: netlink sockets a program keeps open. A route socket bound by
 * the kernel (autobind) with multicast groups in both words of its
 * membership list and a larger receive buffer, a generic netlink socket
 * bound to a port id of its own, and an unbound route socket. After the
 * restore each has its port id, groups and buffer back and still talks to
 * the kernel: a link dump on the route socket, a family lookup on the
 * generic one.
 * Argument "queued": the first socket also has a reply waiting unread (the
 * dump must refuse it).
 * READY route=PORTID generic=PORTID
 */
#define _GNU_SOURCE
#include <linux/genetlink.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>
#include <unistd.h>
#include "workload.h"

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif
#define GROUP_HIGH 33 /* RTNLGRP_BRVLAN: in the second word of the list */

static int nl_socket(int protocol)
{
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
    if (s < 0)
        die("socket");
    return s;
}

static unsigned portid_of(int s)
{
    struct sockaddr_nl a;
    socklen_t len = sizeof a;
    if (getsockname(s, (struct sockaddr *)&a, &len) != 0)
        die("getsockname");
    return a.nl_pid;
}

static int memberships(int s, unsigned *words, int n)
{
    socklen_t len = n * sizeof *words;
    memset(words, 0, len);
    if (getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, words, &len) != 0)
        die("NETLINK_LIST_MEMBERSHIPS");
    return len;
}

static void ask_links(int s)
{
    struct {
        struct nlmsghdr h;
        struct ifinfomsg i;
    } req = { { sizeof req, RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, 0 }, { .ifi_family = AF_UNSPEC } };
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(s, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        die("sendto");
}

/* Reads replies until NLMSG_DONE; how many RTM_NEWLINK came. */
static int count_links(int s)
{
    static char buf[65536];
    int links = 0;
    for (;;) {
        ssize_t n = recv(s, buf, sizeof buf, 0);
        if (n <= 0)
            return -1;
        for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
            if (h->nlmsg_type == NLMSG_DONE)
                return links;
            if (h->nlmsg_type == NLMSG_ERROR)
                return -1;
            if (h->nlmsg_type == RTM_NEWLINK)
                links++;
        }
    }
}

/* Asks generic netlink for the "nlctrl" family; its id, or -1. */
static int nlctrl_id(int s)
{
    struct {
        struct nlmsghdr h;
        struct genlmsghdr g;
        char attrs[64];
    } req;
    memset(&req, 0, sizeof req);
    struct nlattr *a = (struct nlattr *)req.attrs;
    a->nla_type = CTRL_ATTR_FAMILY_NAME;
    a->nla_len = NLA_HDRLEN + sizeof "nlctrl";
    memcpy((char *)a + NLA_HDRLEN, "nlctrl", sizeof "nlctrl");
    req.h.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN + NLA_ALIGN(a->nla_len));
    req.h.nlmsg_type = GENL_ID_CTRL;
    req.h.nlmsg_flags = NLM_F_REQUEST;
    req.h.nlmsg_seq = 7;
    req.g.cmd = CTRL_CMD_GETFAMILY;
    req.g.version = 1;
    struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
    if (sendto(s, &req, req.h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return -1;
    static char buf[8192];
    ssize_t n = recv(s, buf, sizeof buf, 0);
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (n <= 0 || !NLMSG_OK(h, n) || h->nlmsg_type != GENL_ID_CTRL)
        return -1;
    int len = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
    for (a = (struct nlattr *)((char *)NLMSG_DATA(h) + GENL_HDRLEN); len >= (int)NLA_HDRLEN && a->nla_len >= NLA_HDRLEN;
         len -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len)))
        if (a->nla_type == CTRL_ATTR_FAMILY_ID)
            return *(unsigned short *)((char *)a + NLA_HDRLEN);
    return -1;
}

int main(int argc, char **argv)
{
    workload_init();
    int queued = argc > 1 && strcmp(argv[1], "queued") == 0;

    int route = nl_socket(NETLINK_ROUTE);
    struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR };
    if (bind(route, (struct sockaddr *)&a, sizeof a) != 0)
        die("bind route");
    int group = GROUP_HIGH;
    if (setsockopt(route, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &group, sizeof group) != 0)
        die("NETLINK_ADD_MEMBERSHIP");
    int rcvbuf = 300000;
    if (setsockopt(route, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) != 0)
        die("SO_RCVBUF");

    int generic = nl_socket(NETLINK_GENERIC);
    struct sockaddr_nl g = { .nl_family = AF_NETLINK, .nl_pid = 0x40000000u | (unsigned)getpid() };
    if (bind(generic, (struct sockaddr *)&g, sizeof g) != 0)
        die("bind generic");

    int unbound = nl_socket(NETLINK_ROUTE);
    if (queued)
        ask_links(route);

    unsigned groups_before[4], groups_after[4];
    int len_before = memberships(route, groups_before, 4);
    socklen_t sl = sizeof rcvbuf;
    int rcv_before;
    getsockopt(route, SOL_SOCKET, SO_RCVBUF, &rcv_before, &sl);
    unsigned route_id = portid_of(route), generic_id = portid_of(generic);
    printf("READY route=%u generic=%u\n", route_id, generic_id);
    while (!got_usr1)
        pause();

    int fail = 0;
#define CHECK(cond, ...) do { if (!(cond)) { printf("FAIL " __VA_ARGS__); printf("\n"); fail = 1; } } while (0)
    CHECK(portid_of(route) == route_id, "route port id %u, was %u", portid_of(route), route_id);
    CHECK(portid_of(generic) == generic_id, "generic port id %u, was %u", portid_of(generic), generic_id);
    CHECK(portid_of(unbound) == 0, "the unbound socket has port id %u", portid_of(unbound));
    int len_after = memberships(route, groups_after, 4);
    CHECK(len_after == len_before && memcmp(groups_before, groups_after, len_before) == 0,
          "memberships %x %x (%d bytes), were %x %x (%d bytes)", groups_after[0], groups_after[1], len_after,
          groups_before[0], groups_before[1], len_before);
    int rcv_after;
    sl = sizeof rcv_after;
    getsockopt(route, SOL_SOCKET, SO_RCVBUF, &rcv_after, &sl);
    CHECK(rcv_after == rcv_before, "SO_RCVBUF %d, was %d", rcv_after, rcv_before);
    ask_links(route);
    int links = count_links(route);
    CHECK(links > 0, "a link dump on the route socket gave %d links", links);
    CHECK(nlctrl_id(generic) == GENL_ID_CTRL, "generic netlink did not answer for nlctrl");
    if (fail)
        return 1;
    printf("OK\n");
    return 0;
}
