/* libzmq as a peer of the bus, for tests/test_zmtp_interop.py (the same contract as peer.py and peer.mjs).
 *
 *     peer pub|xpub|sub ENDPOINT HEARTBEAT_MS [PREFIX]
 *
 * A message is one line of its frames in hex, separated by spaces.
 * - pub: the first stdin line is a warm-up message, sent every 20 ms until the line "go"
 *   (a PUB drops what it sends before the bus's subscription arrives); then every line is sent.
 * - xpub: prints "subscribed" once the bus's subscription arrived (ZMQ_XPUB_NODROP: a full
 *   queue waits instead of dropping), then sends every stdin line.
 * - sub: subscribes to PREFIX and prints every message it receives.
 * Every role stops at the end of stdin, closing its socket with a linger so nothing queued is lost.
 * ZMTP heartbeats are on: a PING every HEARTBEAT_MS, a TTL of thirty and a timeout of ten intervals
 * (generous, for a busy machine: a bus that never answers still fails in one second).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define WARM_UP_MS 20

static void fail(const char *what) {
    fprintf(stderr, "peer: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(1);
}

/* stdin, read line by line without stdio buffering, so that zmq_poll on fd 0 tells the truth. */
static char *pending;
static size_t pending_size, pending_used;

/* The next whole line (without its newline, owned by the caller), or NULL at the end of stdin. */
static char *read_line(void) {
    for (;;) {
        char *newline = pending_used ? memchr(pending, '\n', pending_used) : NULL;
        if (newline) {
            size_t length = (size_t)(newline - pending);
            char *line = malloc(length + 1);
            memcpy(line, pending, length);
            line[length] = '\0';
            pending_used -= length + 1;
            memmove(pending, newline + 1, pending_used);
            return line;
        }
        if (pending_used == pending_size) {
            pending_size = pending_size ? pending_size * 2 : 1 << 16;
            pending = realloc(pending, pending_size);
        }
        ssize_t got = read(0, pending + pending_used, pending_size - pending_used);
        if (got <= 0)
            return NULL;
        pending_used += (size_t)got;
    }
}

/* Whether a whole line is already read from stdin. */
static int line_pending(void) { return pending_used && memchr(pending, '\n', pending_used) != NULL; }

static int hex_value(char digit) {
    if (digit >= '0' && digit <= '9')
        return digit - '0';
    if (digit >= 'a' && digit <= 'f')
        return digit - 'a' + 10;
    fprintf(stderr, "peer: not hex: %c\n", digit);
    exit(1);
}

/* Send the message a line describes: each space-separated word one frame, in hex. */
static void send_line(void *socket, const char *line) {
    const char *word = line;
    while (*word) {
        const char *end = strchr(word, ' ');
        size_t length = end ? (size_t)(end - word) : strlen(word);
        unsigned char *frame = malloc(length / 2 + 1);
        for (size_t at = 0; at < length / 2; at++)
            frame[at] = (unsigned char)(hex_value(word[2 * at]) << 4 | hex_value(word[2 * at + 1]));
        if (zmq_send(socket, frame, length / 2, end ? ZMQ_SNDMORE : 0) < 0)
            fail("zmq_send");
        free(frame);
        if (!end)
            break;
        word = end + 1;
    }
}

/* Print one received message as a line of hex frames. */
static void print_message(void *socket) {
    int more = 1;
    const char *separator = "";
    while (more) {
        zmq_msg_t frame;
        zmq_msg_init(&frame);
        if (zmq_msg_recv(&frame, socket, 0) < 0)
            fail("zmq_msg_recv");
        const unsigned char *data = zmq_msg_data(&frame);
        fputs(separator, stdout);
        for (size_t at = 0; at < zmq_msg_size(&frame); at++)
            printf("%02x", data[at]);
        separator = " ";
        more = zmq_msg_more(&frame);
        zmq_msg_close(&frame);
    }
    putchar('\n');
    fflush(stdout);
}

static int stdin_readable(int timeout_ms) {
    zmq_pollitem_t item = {NULL, 0, ZMQ_POLLIN, 0};
    if (line_pending())
        return 1;
    if (zmq_poll(&item, 1, timeout_ms) < 0)
        fail("zmq_poll");
    return item.revents != 0; /* readable, or closed (a closed pipe polls as an error) */
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: peer pub|xpub|sub ENDPOINT HEARTBEAT_MS [PREFIX]\n");
        return 2;
    }
    const char *role = argv[1];
    int type = !strcmp(role, "pub") ? ZMQ_PUB : !strcmp(role, "xpub") ? ZMQ_XPUB : ZMQ_SUB;
    int heartbeat = atoi(argv[3]), ttl = heartbeat * 30, timeout = heartbeat * 10, on = 1;
    int linger = type == ZMQ_SUB ? 0 : 10000; /* a publisher flushes what it queued; a SUB has nothing to */
    void *context = zmq_ctx_new();
    void *socket = zmq_socket(context, type);
    zmq_setsockopt(socket, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_IVL, &heartbeat, sizeof heartbeat);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TTL, &ttl, sizeof ttl);
    zmq_setsockopt(socket, ZMQ_HEARTBEAT_TIMEOUT, &timeout, sizeof timeout);
    if (type == ZMQ_XPUB)
        zmq_setsockopt(socket, ZMQ_XPUB_NODROP, &on, sizeof on);
    if (type == ZMQ_SUB)
        zmq_setsockopt(socket, ZMQ_SUBSCRIBE, argc > 4 ? argv[4] : "", argc > 4 ? strlen(argv[4]) : 0);
    if (zmq_connect(socket, argv[2]) < 0)
        fail("zmq_connect");

    char *line;
    if (type == ZMQ_SUB) {
        zmq_pollitem_t items[] = {{socket, 0, ZMQ_POLLIN, 0}, {NULL, 0, ZMQ_POLLIN, 0}};
        for (;;) {
            if (zmq_poll(items, 2, -1) < 0)
                fail("zmq_poll");
            if (items[0].revents & ZMQ_POLLIN)
                print_message(socket);
            else if (items[1].revents && read(0, &(char){0}, 1) <= 0) /* a closed pipe polls as an error */
                break;
        }
    } else {
        if (type == ZMQ_PUB) {
            char *warm = read_line();
            if (!warm)
                return 1;
            for (int going = 0; !going;) {
                send_line(socket, warm);
                if (stdin_readable(WARM_UP_MS)) {
                    line = read_line();
                    going = !line || !strcmp(line, "go");
                    free(line);
                }
            }
            free(warm);
        } else {
            unsigned char subscription[256];
            if (zmq_recv(socket, subscription, sizeof subscription, 0) != 1 || subscription[0] != 1)
                fail("the bus did not subscribe to everything");
            puts("subscribed");
            fflush(stdout);
        }
        while ((line = read_line())) {
            send_line(socket, line);
            free(line);
        }
    }
    zmq_close(socket);
    zmq_ctx_term(context);
    return 0;
}
