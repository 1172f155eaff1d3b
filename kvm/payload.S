/*
 * kvm/payload.S — the guest image, built from kvm/guest/ by kvm/Build.mk,
 * linked into the library as rm_guest_image[rm_guest_image_size].
 */
	.section .rodata
	.balign 4096
	.globl rm_guest_image
	.hidden rm_guest_image
rm_guest_image:
	.incbin RM_GUEST_BIN
rm_guest_image_end:
	.balign 8
	.globl rm_guest_image_size
	.hidden rm_guest_image_size
rm_guest_image_size:
	.quad rm_guest_image_end - rm_guest_image
	.section .note.GNU-stack,"",@progbits
